"""ONNX in, ONNX out distillation (the public :func:`idapgraph.finetune.distill_onnx`).

The compressed ONNX student and the original ONNX teacher become torch modules through
onnx2torch (a maintained converter; an optional dependency, ``pip install onnx2torch``), the
student learns the teacher's outputs by :func:`idapgraph.runners.distill.distill`, and goes back
to ONNX with the TorchScript exporter under the student's own input and output names, symbolic
dims and opset. The result must pass the full ONNX checker and run in onnxruntime with the
student's output shapes, or an :class:`~idapgraph.errors.EmitError` says why. An exporter's
BatchNormalization folded into a Conv stays folded (there is no BatchNorm left to train), and
without it SGD at :func:`~idapgraph.runners.distill.distill`'s learning rate diverges (the
least-squares-healed ResNet-20 at 0.5 FLOPs: loss 15 -> NaN in 4 steps even at lr 0.001), so
the default here is Adam at lr 3e-4 (150 steps on 260 images: top-1 60.4 -> 70.1 %; Adam 1e-4
68.6, 1e-3 60.3; SGD 0.005 with the gradient norm clipped to 1: 69.4).
"""

from __future__ import annotations

import io
import os
import warnings

from ..errors import EmitError, InputError
from .distill import History, distill

NEEDS = "pip install onnx2torch   (or: pip install 'idapgraph[distill]')"


def distill_onnx(student, teacher, inputs, **options):
    """Distil the ONNX ``student`` (a ``ModelProto`` or a path) from the ONNX ``teacher`` on the
    unlabelled ``inputs`` (an array, first axis the samples, or an .npz file holding it under
    the input's name or alone; the models' one input).
    ``options``: those of :func:`idapgraph.finetune.distill` (``seconds``, ``steps``, ``lr``,
    ``augment``, ``evaluate`` -- called with the torch student --, ...; defaults here
    ``optimizer="adam"``, ``lr=3e-4``, ``weight_decay=0``). Returns
    ``(onnx.ModelProto, History)``; the inputs are not modified."""
    from ..emit.validate import check_onnx

    s_proto, t_proto = _load(student), _load(teacher)
    name, dims = _single_input(s_proto)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = _npz(os.fspath(inputs), s_proto, name)
    s_mod, t_mod = _to_torch(s_proto, "student"), _to_torch(t_proto, "teacher")
    hist = distill(s_mod, t_mod, inputs,
                   **{"optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0, **options})
    out = _export(s_mod, s_proto, name, dims, inputs)
    before = check_onnx(s_proto)
    check_onnx(out, before)
    return out, hist


def _load(model):
    import onnx

    from ..frontends import onnx_file

    return model if isinstance(model, onnx.ModelProto) else onnx_file.load(model)


def _single_input(proto) -> tuple[str, dict[int, str]]:
    """The model's one graph input (not an initializer) and its symbolic dims by axis."""
    inits = {t.name for t in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise InputError(f"distill_onnx takes models with one input; this one has {len(ins)}")
    dims = {ax: d.dim_param for ax, d in enumerate(ins[0].type.tensor_type.shape.dim)
            if d.dim_param}
    return ins[0].name, dims


def _npz(path: str, proto, name: str):
    """The array of an .npz file for the model's input ``name`` (checked by the calibration
    loader: rank, fixed dims, dtype kind)."""
    from onnx import helper

    from .data import _load_npz

    t = next(i for i in proto.graph.input if i.name == name).type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    data = _load_npz(path, [(name, shape, helper.tensor_dtype_to_np_dtype(t.elem_type))])
    arr = data.get(name, next(iter(data.values())) if len(data) == 1 else None)
    if arr is None:
        raise InputError(f"{path}: no array named {name!r} (the model's input) and more than one "
                         "array to choose from")
    return arr


def _to_torch(proto, role: str):
    try:
        from onnx2torch import convert
    except ImportError:
        raise InputError(f"ONNX distillation converts through onnx2torch: {NEEDS}") from None
    try:
        return convert(_weights_as_initializers(proto))
    except Exception as e:  # noqa: BLE001  (the converter's own message names the op)
        raise InputError(f"onnx2torch cannot convert the {role}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _weights_as_initializers(proto):
    """A copy of ``proto`` whose Identity-of-initializer and Constant nodes are initializers:
    onnx2torch reads a Conv's weights only from initializers, and the TorchScript exporter
    writes weights it deduplicated as ``Identity`` of one initializer."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    known = {t.name: t for t in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in known:
            t = onnx.TensorProto()
            t.CopyFrom(known[node.input[0]])
        elif node.op_type == "Constant" and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            t = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t))
        else:
            keep.append(node)
            continue
        t.name = node.output[0]
        g.initializer.append(t)
        known[t.name] = t
    del g.node[:]
    g.node.extend(keep)
    return out


def _export(module, like, name: str, dims: dict[int, str], inputs):
    """``module`` as ONNX with ``like``'s input/output names, symbolic dims and opset."""
    import onnx
    import torch

    # TorchScript refuses names such as '272' (its own exporter's): placeholders, renamed after
    outs = [f"__out{i}" for i in range(len(like.graph.output))]
    axes = {name: dims} if dims else None
    for tmp, o in zip(outs, like.graph.output) if axes else ():
        sym = {ax: d.dim_param for ax, d in enumerate(o.type.tensor_type.shape.dim)
               if d.dim_param}
        if sym:
            axes[tmp] = sym
    opset = next((o.version for o in like.opset_import if o.domain in ("", "ai.onnx")), 17)
    example = torch.as_tensor(inputs[:1])
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), buf, dynamo=False, input_names=[name],
                              output_names=outs, dynamic_axes=axes,
                              opset_version=max(min(opset, 20), 13))
    except Exception as e:  # noqa: BLE001
        raise EmitError(f"the distilled student does not export to ONNX: "
                        f"{str(e).splitlines()[0]}") from e
    out = onnx.load_from_string(buf.getvalue())
    _rename(out.graph, dict(zip(outs, (o.name for o in like.graph.output))))
    return out


def _rename(graph, names: dict[str, str]) -> None:
    """Tensors renamed wherever they are written, read or listed as graph outputs."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for o in graph.output:
        o.name = names.get(o.name, o.name)


__all__ = ["distill_onnx", "History"]
