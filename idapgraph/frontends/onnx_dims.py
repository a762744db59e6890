"""Named symbolic dims of an ONNX model, and a copy with some of them fixed (what
onnxruntime's free-dimension overrides do to a session, done to the model itself so that shape
inference and the latency tables see the sizes too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # onnx is imported where a model is copied: importing idapgraph stays light
    import onnx


def input_dims(model: onnx.ModelProto) -> list[str]:
    """The named symbolic dims of the graph inputs (weights excluded), in order of appearance."""
    init = {i.name for i in model.graph.initializer}
    names: list[str] = []
    for vi in model.graph.input:
        if vi.name in init:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and not d.HasField("dim_value") and d.dim_param not in names:
                names.append(d.dim_param)
    return names


def check(model: onnx.ModelProto, dims: dict) -> dict[str, int]:
    """``dims`` (symbolic dim name -> size) validated against ``model``'s inputs: one clear
    :class:`InputError` for a name no input has or a size that is not a positive integer."""
    names = input_dims(model)
    out = {}
    for k, v in dims.items():
        if k not in names:
            have = ", ".join(names) if names else "none"
            raise InputError(f"dims: the model's inputs have no symbolic dim {k!r} "
                             f"(symbolic dims: {have})")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"dims: {k} must be an integer >= 1, got {v!r}")
        out[k] = int(v)
    return out


def fixed(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` with every dim named in ``dims`` set to its size on the inputs and
    outputs, and without the intermediate shapes (``value_info``), which shape inference
    derives again: a dynamo export's shape-computing tensors annotated with the symbolic dim
    made onnxruntime reject the model once only the dims were replaced (BERT: "Incorrect or
    missing input value for starts and ends" at a Slice). Other symbolic dims stay; no
    ``dims``: ``model`` itself."""
    if not dims:
        return model
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    for vi in list(out.graph.input) + list(out.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_value = dims[d.dim_param]  # a oneof: clears dim_param
    return out
