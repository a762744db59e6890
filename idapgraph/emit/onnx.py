"""Apply a :class:`~idapgraph.ir.plan.Rewrite` to an ONNX model (via onnx-graphsurgeon)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from ..errors import EmitError
from ..frontends import onnx_external, onnx_light
from ..frontends.onnx import export_like, quiet
from ..ir.graph import PARAM, Graph
from ..ir.plan import Rewrite


def _int_const(name: str, values) -> gs.Constant:
    return gs.Constant(name, np.asarray(values, dtype=np.int64))


def _reshape_target(g: gs.Graph, gn: gs.Node, target: list, at: int = 1) -> gs.Tensor:
    """The new shape input (input ``at``) of a Reshape/Expand (a Resize's sizes): a constant,
    or — for a target concatenated at run time (``None`` entries) — a private copy of that
    Concat with its constant pieces rewritten."""
    name = f"{gn.name}__idapgraph_shape"
    if all(t is not None for t in target):
        return _int_const(name, target)
    concat = gn.inputs[at].inputs[0]
    pieces, at = [], 0
    for i, piece in enumerate(concat.inputs):
        n = int(piece.shape[0])
        if isinstance(piece, gs.Constant):
            piece = _int_const(f"{name}_{i}", target[at:at + n])
        pieces.append(piece)
        at += n
    out = gs.Variable(name, dtype=np.int64, shape=[at])
    g.nodes.append(gs.Node("Concat", f"{concat.name}__idapgraph_{gn.name}", {"axis": 0}, pieces,
                           [out]))
    return out


def _scale_output(g: gs.Graph, gn: gs.Node, scale: float) -> None:
    """``gn``'s output becomes its result times ``scale`` (a Mul appended; a mean or an RMSNorm
    that keeps its original divisor after its axis lost channels)."""
    out = gn.outputs[0]
    mid = gs.Variable(f"{out.name}__idapgraph_unscaled", dtype=out.dtype)
    gn.outputs[0] = mid
    c = gs.Constant(f"{out.name}__idapgraph_scale", np.asarray(scale, dtype=_np_dtype(out)))
    g.nodes.append(gs.Node("Mul", f"{gn.name}__idapgraph_scale", {}, [mid, c], [out]))


def _rewrite_pad(gn: gs.Node, node, pads: list) -> None:
    """New canonical pads (begins then ends over every axis) as the Pad node holds them: an
    attribute before opset 11, input 1 since, over just the ``axes`` input's axes if it has one."""
    axes = node.attrs.get("pad_axes")
    if axes is not None:
        r = len(pads) // 2
        pads = [pads[a] for a in axes] + [pads[a + r] for a in axes]
    if "pads" in gn.attrs:
        gn.attrs["pads"] = [int(p) for p in pads]
    else:
        gn.inputs[1] = _int_const(f"{gn.name or node.name}__idapgraph_pads", pads)


def emit(model: onnx.ModelProto, graph: Graph, rewrite: Rewrite, mode: str = "remove") -> onnx.ModelProto:
    """Return a new ModelProto; ``model`` is the normalised model the IR was built from.

    ``mode="remove"`` slices initializers and rewrites attributes and shape constants;
    ``mode="zero"`` only zeroes the removed initializer entries. Initializers keep their stored
    dtype (float16, bfloat16, …).
    """
    with quiet():
        return _emit(model, graph, rewrite, mode)


def _emit(model: onnx.ModelProto, graph: Graph, rewrite: Rewrite, mode: str) -> onnx.ModelProto:
    g = onnx_external.import_graph(model)
    external = onnx_external.uses_external(model)
    tensors = g.tensors()
    table = rewrite.keep if mode == "remove" else rewrite.removed
    for name, axes in table.items():
        if graph.tensors[name].kind != PARAM:
            continue
        c = tensors[name]
        v = onnx_external.values(c)  # a memory map for an external tensor: take reads the kept part
        if mode != "remove":
            v = np.array(v)
        for ax, idx in sorted(axes.items()):
            if mode == "remove":
                v = np.take(v, idx, axis=ax)
            else:
                sl = [slice(None)] * v.ndim
                sl[ax] = idx
                v[tuple(sl)] = 0
        onnx_external.set_values(c, v, external)
        del v
    if mode == "remove":
        n_nodes = len(g.nodes)
        for node in graph:
            upd = rewrite.attrs.get(node.name)
            if not upd:
                continue
            gn = g.nodes[node.handle]
            if node.op == "conv":
                gn.attrs["group"] = int(upd["groups"])
            elif node.op == "groupnorm":
                gn.attrs["num_groups"] = int(upd["groups"])
            elif node.op == "split":
                gn.attrs.pop("num_outputs", None)
                const = _int_const(f"{gn.name or node.name}__idapgraph_split", upd["sizes"])
                if len(gn.inputs) > 1:
                    gn.inputs[1] = const
                else:
                    gn.inputs.append(const)
            elif node.op == "pad":
                _rewrite_pad(gn, node, upd["pads"])
            elif node.op in ("reshape", "expand"):
                gn.inputs[1] = _reshape_target(g, gn, upd["target"])
            elif node.op == "reduce" and "scale" in upd:
                _scale_output(g, gn, upd["scale"])
            elif node.op == "layernorm" and "scale" in upd:  # RMSNormalization's width
                gn.attrs["epsilon"] = float(upd["eps"])
                _scale_output(g, gn, upd["scale"])
            elif node.op == "pool" and "sizes" in upd:  # Resize: sizes are input 3
                gn.inputs[3] = _reshape_target(g, gn, upd["sizes"], at=3)
            elif node.op == "index" and "slice_axes" in node.attrs:  # Gather needs no rewrite
                axes = node.attrs["slice_axes"]
                mp = upd["map"]
                gn.inputs[1] = _int_const(f"{gn.name or node.name}__idapgraph_starts",
                                          [mp[a][1] for a in axes])
                gn.inputs[2] = _int_const(f"{gn.name or node.name}__idapgraph_ends",
                                          [mp[a][2] for a in axes])
        keep_io = {t.name for t in g.inputs} | {t.name for t in g.outputs}
        for t in tensors.values():
            if isinstance(t, gs.Variable) and t.name not in keep_io:
                t.shape = None
        appended = len(g.nodes) > n_nodes  # the Concat of a run-time shape target
        g.cleanup(remove_unused_graph_inputs=False)
        if appended:
            g.toposort()
    out = export_like(g, model)
    if mode == "remove":
        try:
            light, restore = onnx_light.split(out)
            out = restore(onnx.shape_inference.infer_shapes(light, check_type=True,
                                                            strict_mode=True, data_prop=True),
                          in_place=True)
        except Exception as e:  # noqa: BLE001
            raise EmitError(f"rewritten model fails ONNX shape inference: {str(e).splitlines()[0]}") from e
    return out


def get_param(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return np.array(onnx_external.read(t))
    raise KeyError(name)


def can_add_bias(graph: Graph, node_name: str) -> bool:
    node = graph.nodes[node_name]
    return node.source in ("Conv", "Gemm") and (len(node.inputs) < 3 or node.inputs[2] is None)


def _np_dtype(t: gs.Tensor, default=np.float32):
    """The numpy dtype of a graphsurgeon tensor (stored values for a constant)."""
    if isinstance(t, gs.Constant):
        if isinstance(t._values, onnx_external.ExternalValues):  # without reading the data
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t._values.tensor.data_type))
        return np.asarray(t.values).dtype
    try:
        return np.dtype(t.dtype) if t.dtype is not None else np.dtype(default)
    except TypeError:
        return np.dtype(default)


def set_params(model: onnx.ModelProto, graph: Graph, updates: dict, new_bias: dict) -> onnx.ModelProto:
    """A new model with initializers replaced (in their stored dtype) and biases added to
    bias-less Conv/Gemm nodes (in the dtype the node computes in: a weight stored as fp16 and
    widened by a Cast gets an fp32 bias)."""
    with quiet():
        return _set_params(model, updates, new_bias)


_PLAIN = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _replaced_initializers(model: onnx.ModelProto, updates: dict) -> onnx.ModelProto | None:
    """``model`` with the initializers ``updates`` names replaced in a copy of the proto (no
    graph re-import: healing sets one layer's parameters at a time), or None where that is not
    plain (an update that is not a float initializer stored in the proto itself)."""
    index = {t.name: i for i, t in enumerate(model.graph.initializer)}
    inits = model.graph.initializer
    if not all(n in index and inits[index[n]].data_type in _PLAIN
               and not inits[index[n]].external_data for n in updates):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, value in updates.items():
        t = out.graph.initializer[index[name]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        t.CopyFrom(onnx.numpy_helper.from_array(
            np.ascontiguousarray(np.asarray(value).astype(dtype)), name))
    return out


def _set_params(model: onnx.ModelProto, updates: dict, new_bias: dict) -> onnx.ModelProto:
    if not new_bias and not onnx_external.uses_external(model):
        out = _replaced_initializers(model, updates)
        if out is not None:
            return out
    g = onnx_external.import_graph(model)
    external = onnx_external.uses_external(model)
    tensors = g.tensors()
    for name, value in updates.items():
        t = tensors[name]
        onnx_external.set_values(t, np.asarray(value).astype(_np_dtype(t)), external)
    by_name = {n.name: n for n in g.nodes}
    for node_name, value in new_bias.items():
        gn = by_name.get(node_name)
        if gn is None or len(gn.inputs) < 2:
            continue
        const = gs.Constant(f"{node_name}__idapgraph_bias",
                            np.ascontiguousarray(np.asarray(value).astype(_np_dtype(gn.inputs[1]))))
        if len(gn.inputs) == 2:
            gn.inputs.append(const)
        else:
            gn.inputs[2] = const
    out = export_like(g, model)
    return out


def bypass(model: onnx.ModelProto, blocks: list[tuple[str, str, object]]) -> onnx.ModelProto:
    """A new model where each ``(node, skip tensor, constant or None)`` node — a residual Add, or
    a layer's last node — becomes its skip input (plus the constant: mean substitution, in the
    skip's dtype); the dead branch is removed."""
    with quiet():
        return _bypass(model, blocks)


def _bypass(model: onnx.ModelProto, blocks: list[tuple[str, str, object]]) -> onnx.ModelProto:
    g = onnx_external.import_graph(model)
    tensors = g.tensors()
    by_name = {n.name: n for n in g.nodes}
    for add, skip, const in blocks:
        node = by_name[add]
        sk = tensors[skip]
        if const is not None:  # the add (or a layer's last node) becomes skip + mean
            node.op, node.attrs, node.domain = "Add", {}, None
            node.inputs = [sk, gs.Constant(f"{add}__idapgraph_mean",
                                           np.ascontiguousarray(const, dtype=_np_dtype(sk)))]
            while len(node.outputs) > 1:  # e.g. LayerNormalization's optional mean/std
                node.outputs.pop()
            continue
        out = node.outputs[0]
        if out in g.outputs:
            node.op, node.inputs, node.attrs = "Identity", [sk], {}
            continue
        for consumer in list(out.outputs):
            consumer.inputs = [sk if t is out else t for t in consumer.inputs]
        node.outputs.clear()
    g.cleanup(remove_unused_graph_inputs=False)
    out = export_like(g, model)
    return onnx.shape_inference.infer_shapes(out, data_prop=True)
