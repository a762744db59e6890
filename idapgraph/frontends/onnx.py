"""ONNX frontend: onnx-graphsurgeon graph + ONNX shape inference -> IR.

The model is first *normalised* (local functions inlined, ``Constant`` nodes turned into
initializers, dead nodes removed, export idioms that hide channels rewritten exactly:
:mod:`.onnx_peephole`) and shape-inferred; the emitter re-imports the same normalised
model, so IR nodes refer to graphsurgeon nodes by their position.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs

from ..errors import InputError
from ..ir.graph import ACTIVATION, META, PARAM, Graph, Node, Tensor
from ..ir.ops import IDENTITY
from . import onnx_external, onnx_light, onnx_peephole

_UNARY = {
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
    "Gelu", "Erf", "Identity", "Dropout", "Cast", "Neg", "Exp", "Log", "Abs", "Sqrt", "Reciprocal",
    "Softplus", "Softsign", "Mish", "Clip", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Shrink",
}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
                "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
                "PRelu", "BitwiseAnd", "BitwiseOr"}
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize",
         "Upsample", "GlobalLpPool"}
_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin",
           "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSumExp": "logsumexp",
           "ReduceSumSquare": "sumsq"}  # op -> the reduce node's ``fn``
_META_SOURCES = {"Shape", "Size"}
_FLOAT = {"float16", "bfloat16", "float32", "float64"}  # numpy dtype names (bfloat16: ml_dtypes)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE}


@contextlib.contextmanager
def quiet():
    """onnx-graphsurgeon prints warnings on stdout (one per bfloat16 constant, although it
    loads them losslessly through ml_dtypes); keep stdout clean for ``--json``."""
    log = gs.logger.G_LOGGER
    old = log.severity
    log.severity = max(old, log.ERROR)
    try:
        yield
    finally:
        log.severity = old


def _dtype_name(dtype) -> str:
    """numpy name of a graphsurgeon dtype (a numpy dtype, or an ONNX type number for types
    graphsurgeon does not map, such as bfloat16)."""
    try:
        if isinstance(dtype, (int, np.integer)):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(int(dtype))
        return np.dtype(dtype).name
    except (TypeError, KeyError, ValueError):
        return ""


def stored_casts(graph: gs.Graph) -> dict[str, gs.Constant]:
    """Cast nodes that convert a stored float weight to another float type (fp16/bf16
    initializers widened for fp32 compute): their output name -> the stored constant. The IR reads the constant in the cast's place, so
    the weight is pruned (and written back) in its stored dtype."""
    outs = {t.name for t in graph.outputs}
    found = {}
    for n in graph.nodes:
        if n.op != "Cast" or (n.domain or "") not in ("", "ai.onnx") or len(n.inputs) != 1:
            continue
        c, y = n.inputs[0], n.outputs[0]
        if isinstance(c, gs.Constant) and c.shape is not None and len(c.shape) >= 1 \
                and _dtype_name(c.dtype) in _FLOAT and n.attrs.get("to") in _FLOAT_TYPES \
                and y.name not in outs:
            found[y.name] = c
    return found


def normalize(model: onnx.ModelProto, notes: list[str] | None = None) -> onnx.ModelProto:
    """Inline local functions, turn Constant nodes into initializers, infer shapes. A step that
    only sharpens the analysis (constant folding, onnxruntime's symbolic shape inference) and
    fails is skipped and said: one line in ``notes``, or a Python warning without it."""
    with quiet():
        return _normalize(model, notes)


def _note(notes: list[str] | None, msg: str) -> None:
    """Record that an optional step was skipped (once per message)."""
    if notes is None:
        warnings.warn(msg, stacklevel=3)
    elif msg not in notes:
        notes.append(msg)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _normalize(model: onnx.ModelProto, notes: list[str] | None = None) -> onnx.ModelProto:
    try:
        if model.functions:
            model = onnx.inliner.inline_local_functions(model)
        graph = onnx_external.import_graph(_infer(model, notes))
    except Exception as e:  # noqa: BLE001 - protobuf/graphsurgeon raise many kinds
        raise InputError(f"cannot read the ONNX graph: {e}") from e
    for node in graph.nodes:
        if (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        value = None
        if node.op == "Constant":
            value = _constant_value(node)
        elif node.op == "Identity" and isinstance(node.inputs[0], gs.Constant):
            value = _alias_value(node.inputs[0])  # exporters alias shared weights this way
        if value is not None and node.outputs[0] not in graph.outputs:
            out = node.outputs[0]
            node.outputs.clear()
            out.to_constant(value)
            if isinstance(value, onnx_external.ExternalValues):
                out._idapgraph_source = value  # exported as a reference even once read
    _untie_small_constants(graph)
    graph.cleanup(remove_unused_graph_inputs=False)
    graph = _fold_rounds(graph, model, notes)
    if onnx_peephole.fuse_swapped_last_axes(graph):
        graph.cleanup(remove_unused_graph_inputs=False)
    used: set[str] = set()
    for i, node in enumerate(graph.nodes):  # unique, stable node names for plans and healing
        if not node.name or node.name in used:
            base = node.name or node.op
            node.name = f"{base}_{i}"
            while node.name in used:
                node.name += "_"
        used.add(node.name)
    return _infer(export_like(graph, model), notes, owned=True)


# rounds of constant folding and shape inference at most (static inputs only, see _fold_rounds)
_FOLD_ROUNDS = 4


def _fold_rounds(graph: gs.Graph, model: onnx.ModelProto, notes) -> gs.Graph:
    """Fold ``graph``'s constants (:func:`_fold`); where its inputs are all static and Shape
    nodes remain, infer shapes again and fold again, while that removes nodes. One round stops
    where an op's output shape was unknown when folding began and is computed by folding
    itself (Faster R-CNN's image transform: a resize to sizes made of float arithmetic, then
    padding to a multiple of 32 measured by Shape nodes: a second round gives every conv its
    spatial size)."""
    _fold(graph, notes)
    for _ in range(_FOLD_ROUNDS - 1):
        static = all(t.shape is not None and all(isinstance(d, int) for d in t.shape)
                     for t in graph.inputs)
        if not static or not any(n.op == "Shape" for n in graph.nodes):
            break
        before = len(graph.nodes)
        graph = onnx_external.import_graph(_infer(export_like(graph, model), notes, owned=True))
        _fold(graph, notes)
        if len(graph.nodes) >= before:
            break
    return graph


def _fold(graph: gs.Graph, notes) -> None:
    """Shape arithmetic on static dimensions (Shape -> Gather -> Concat -> Reshape, chunk
    bounds) becomes constants, so reshape targets and slice bounds can be rewritten. Runs
    onnxruntime on constant subgraphs only; large constants are not folded. Casts of stored
    weights are held out: folding them would store fp16/bf16 weights as fp32."""
    held = _hold_stored_casts(graph)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        graph.fold_constants(fold_shapes=True, error_ok=True, size_threshold=1 << 16)
    except Exception as e:  # noqa: BLE001 - folding is an optimisation; the unfolded graph is valid
        _note(notes, f"constant folding failed ({_first_line(e)}); shape arithmetic stays "
                     "unfolded, so channels behind reshape targets or slice bounds it computes "
                     "may be frozen")
    for node, const in held:
        node.inputs[0] = const
    graph.cleanup(remove_unused_graph_inputs=False)


def _alias_value(c: gs.Constant):
    """The values for a copy of constant ``c``: its array, or for an external tensor a lazy
    reference to the same bytes (under its own proto, as export renames the proto)."""
    if isinstance(c._values, onnx_external.ExternalValues):
        t = onnx.TensorProto()
        t.CopyFrom(c._values.tensor)
        return onnx_external.ExternalValues(t)
    return np.asarray(c.values)


def _hold_stored_casts(graph: gs.Graph) -> list[tuple[gs.Node, gs.Constant]]:
    """Detach the constants of :func:`stored_casts` (a placeholder takes their place) so
    constant folding leaves those casts alone; the caller puts them back."""
    held = []
    names = set(stored_casts(graph))
    for n in graph.nodes:
        if n.op == "Cast" and n.outputs and n.outputs[0].name in names:
            const = n.inputs[0]
            n.inputs[0] = gs.Variable(f"{const.name}__idapgraph_held", dtype=const.dtype,
                                      shape=const.shape)
            held.append((n, const))
    return held


# element types onnxruntime's Python API feeds from numpy and its CPU kernels widely cover
_COMMON_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                 onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                 onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                 onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def check_runnable(model: onnx.ModelProto) -> None:
    """idapgraph calibrates and validates every model in onnxruntime (CPU). Refuse, with one
    line, a model whose inputs it cannot feed from numpy (bfloat16, float8, …) or that uses
    such types and does not load there (bfloat16 compute: few CPU kernels). Models that store
    weights in bfloat16 and widen them with a Cast before computing run, and are handled."""
    init = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"model input {vi.name!r} is not a tensor ({vi.type.WhichOneof('value')}"
                             "): idapgraph calibrates with tensors only")
        et = vi.type.tensor_type.elem_type
        if et not in _COMMON_TYPES:
            raise InputError(f"model input {vi.name!r} is {_type_name(et)}: onnxruntime cannot be "
                             "fed it from numpy, and idapgraph calibrates and validates there; "
                             "export the model with float32 or float16 inputs")
    g = model.graph
    types = {t.data_type for t in g.initializer} | {
        v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)} | {
        a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    rare = sorted(t for t in types - _COMMON_TYPES if t)
    if not rare:
        return
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds
        first = " ".join(str(e).split())[:240]
        raise InputError(f"model does not run in onnxruntime on CPU, which idapgraph needs to "
                         f"calibrate and validate ({', '.join(map(_type_name, rare))} compute has "
                         f"few CPU kernels; storing weights in it and computing in float32 "
                         f"works): {first}") from None


def export_like(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` keeping ``like``'s IR version, producer and metadata; external tensors
    that were read but not replaced stay references (see :mod:`.onnx_external`)."""
    onnx_external.relazy(graph)
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = like.ir_version
    out.producer_name, out.producer_version = like.producer_name, like.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out


# ops whose output has the input's shape but that onnx shape inference leaves untyped
# (GroupNormalization 18/21: onnx 1.23 infers nothing through its function body)
_SAME_SHAPE_UNINFERRED = {"GroupNormalization"}


def _infer(model: onnx.ModelProto, notes: list[str] | None = None,
           owned: bool = False) -> onnx.ModelProto:
    """``model`` with inferred shapes (run on a copy without the large weights' bytes); with
    ``owned``, ``model`` itself (not copied) is the result."""
    light, restore = onnx_light.split(model)
    return restore(_infer_light(light, notes), in_place=owned)


def _infer_light(model: onnx.ModelProto, notes: list[str] | None = None) -> onnx.ModelProto:
    try:
        out = onnx.shape_inference.infer_shapes(model, data_prop=True)
        for _ in range(sum(n.op_type in _SAME_SHAPE_UNINFERRED for n in out.graph.node)):
            if not _type_same_shape_outputs(out):
                break
            out = onnx.shape_inference.infer_shapes(out, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"ONNX shape inference failed: {str(e).splitlines()[0]}") from e
    if _has_symbolic_dims(out):
        # with symbolic batch/sequence dimensions ONNX's own inference loses sizes that follow
        # from run-time shape arithmetic (the head count of ``view(B, T, -1, d)``);
        # onnxruntime's symbolic inference (sympy) keeps them
        dynamic = _data_dependent_ops(out)
        if dynamic:
            _note(notes, "onnxruntime's symbolic shape inference skipped: the model has "
                         f"data-dependent shapes ({', '.join(dynamic)}), on which its "
                         "simplification can run for many minutes; ONNX's own inference is "
                         "used, so sizes that follow from run-time shape arithmetic may be "
                         "unknown and their channels frozen")
            return out
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            with contextlib.redirect_stdout(io.StringIO()), _no_leftover(_SYM_TEMP):
                sym = SymbolicShapeInference.infer_shapes(out, auto_merge=True)
            if sym is not None:
                out = sym
        except Exception as e:  # noqa: BLE001 - an optimisation: ONNX's inference already ran
            _note(notes, f"onnxruntime's symbolic shape inference failed ({_first_line(e)}); "
                         "ONNX's own inference is used, so sizes that follow from run-time "
                         "shape arithmetic may be unknown and their channels frozen")
    return out


# onnxruntime's symbolic inference saves what it inferred under this name in the working
# directory (its weights in a data file named by a uuid) when it cannot infer every shape
_SYM_TEMP = "sym_shape_infer_temp.onnx"


@contextlib.contextmanager
def _no_leftover(name: str):
    """Remove the model file ``name`` (in the working directory) and the external data files it
    names, where the block created them; files there before it are left alone."""
    import os

    existed = os.path.exists(name)
    try:
        before: set[str] | None = set(os.listdir("."))
    except OSError:  # an unreadable working directory: its data files are left alone
        before = None
    try:
        yield
    finally:
        if not existed and os.path.exists(name):
            with contextlib.suppress(Exception):
                m = onnx.load(name, load_external_data=False)
                for t in m.graph.initializer:
                    for e in t.external_data:
                        if e.key == "location" and before is not None \
                                and os.path.basename(e.value) not in before:
                            os.remove(e.value)
            with contextlib.suppress(OSError):
                os.remove(name)


# ops whose output sizes depend on tensor values (or, with subgraphs, on the branch taken and
# the trip count): symbolic inference gives each a fresh symbol and the expressions built on
# them grow (Faster R-CNN's NMS/RoIAlign heads: over 15 minutes in sympy's simplify)
_DATA_DEPENDENT = {"NonZero", "NonMaxSuppression", "Unique", "Compress", "If", "Loop", "Scan"}


def _data_dependent_ops(model: onnx.ModelProto) -> list[str]:
    """The :data:`_DATA_DEPENDENT` op types of ``model``'s main graph, sorted."""
    return sorted({n.op_type for n in model.graph.node
                   if n.op_type in _DATA_DEPENDENT and (n.domain or "") in ("", "ai.onnx")})


def _has_symbolic_dims(model: onnx.ModelProto) -> bool:
    return any(d.dim_param or not d.HasField("dim_value")
               for v in list(model.graph.input) + list(model.graph.value_info)
               for d in v.type.tensor_type.shape.dim)


def _type_same_shape_outputs(model: onnx.ModelProto) -> bool:
    """Give the outputs of :data:`_SAME_SHAPE_UNINFERRED` ops their input's type, so inference
    can go on past them; True if any was added."""
    g = model.graph
    typed = {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output)
             if v.type.tensor_type.HasField("shape")}
    added = False
    for n in g.node:
        if (n.domain or "") in ("", "ai.onnx") and n.op_type in _SAME_SHAPE_UNINFERRED \
                and n.input and n.input[0] in typed and n.output[0] not in typed:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(typed[n.input[0]])
            vi.name = n.output[0]
            g.value_info.append(vi)
            typed[vi.name] = vi
            added = True
    return added


def _untie_small_constants(graph: gs.Graph) -> None:
    """Exporters deduplicate equal initializers (the zero biases of BN-folded convs, LayerNorm
    ones/zeros), which would falsely tie unrelated channels together. Vectors and scalars shared
    by several nodes get one copy per consumer — also when they are read through one widening
    Cast (fp16/bf16 storage): the copy gets its own Cast. Real weight tying (matrices) stays."""
    seen: dict[str, int] = {}
    casts = stored_casts(graph)
    cast_nodes = {n.outputs[0].name: n for n in graph.nodes
                  if n.op == "Cast" and n.outputs and n.outputs[0].name in casts}
    added = False
    for node in list(graph.nodes):
        if node.op == "Cast" and node.outputs and node.outputs[0].name in casts:
            continue
        for i, t in enumerate(node.inputs):
            cast = cast_nodes.get(t.name)
            const = casts[t.name] if cast is not None else t
            if not isinstance(const, gs.Constant) or len(const.shape) > 1:
                continue
            k = seen.get(t.name, 0)
            seen[t.name] = k + 1
            if not k:
                continue
            copy = gs.Constant(f"{const.name}__idapgraph_copy{k}", np.array(const.values))
            if cast is None:
                node.inputs[i] = copy
                continue
            out = gs.Variable(f"{t.name}__idapgraph_copy{k}", dtype=t.dtype, shape=t.shape)
            graph.nodes.append(gs.Node("Cast", f"{cast.name}__idapgraph_copy{k}", dict(cast.attrs),
                                       [copy], [out]))
            node.inputs[i] = out
            added = True
    if added:
        graph.toposort()


def _constant_value(node: gs.Node) -> np.ndarray | None:
    a = node.attrs
    if "value" in a and isinstance(a["value"], gs.Constant):
        return np.asarray(a["value"].values)
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                    ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dt)
    return None


def _values(c: gs.Constant) -> np.ndarray:
    with quiet():  # an external tensor is memory-mapped, not cached (see .onnx_external)
        return onnx_external.values(c)


def _pad_value(n: gs.Node, opset: int) -> float | None:
    """A constant-mode Pad's fill value (an attribute before opset 11, optional input 2 since;
    0 when absent); None when it is computed at run time."""
    if opset < 11:
        return float(n.attrs.get("value", 0.0))
    if len(n.inputs) < 3 or not n.inputs[2].name:
        return 0.0
    v = _const(n.inputs[2])
    return None if v is None or np.size(v) != 1 else float(np.ravel(v)[0])


def _const(t: gs.Tensor) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _elementwise_fn(op: str, ins: list) -> dict:
    """The ``fn`` attribute of an elementwise node the rules read: ``add``, or ``square``
    (``Pow(x, 2)``, ``Mul(x, x)``: RMSNorm's mean of squares)."""
    if op == "Add":
        return {"fn": "add"}
    exponent = _const(ins[1]) if op == "Pow" and len(ins) == 2 else None
    if (exponent is not None and exponent.size == 1 and float(exponent.ravel()[0]) == 2.0) or (
            op == "Mul" and len(ins) == 2 and ins[0] is ins[1]):
        return {"fn": "square"}
    return {}


def _shape_target(t: gs.Tensor) -> list | None:
    """A Reshape's target: its constant values, or — for a target concatenated at run time from
    pieces such as ``Shape(x)[0]`` and constants, as exports with dynamic axes write it — the
    constant entries with ``None`` for the run-time ones (the rewrite then edits the pieces)."""
    v = _const(t)
    if v is not None:
        return [int(x) for x in v.ravel()]
    prod = t.inputs[0] if len(t.inputs) == 1 else None
    if prod is None or prod.op != "Concat" or prod.attrs.get("axis", 0) not in (0, -1):
        return None
    out: list = []
    for piece in prod.inputs:
        pv = _const(piece)
        if pv is not None:
            out.extend(int(x) for x in pv.ravel())
        elif piece.shape is not None and len(piece.shape) == 1 and isinstance(piece.shape[0], int):
            out.extend([None] * piece.shape[0])
        else:
            return None
    return out


_RESIZE = {"Resize", "Upsample"}


def _resize_attrs(n: gs.Node, ins: list, opset: int) -> dict[str, Any]:
    """What a Resize/Upsample sets the output shape from: ``sizes`` (a target as
    :func:`_shape_target` reads it; None when not readable) or ``scales`` (constant values;
    None when computed at run time), and ``resize_axes`` (opset 18's ``axes``; None: all)."""
    def given(i: int) -> bool:
        return len(ins) > i and bool(ins[i].name)

    at_scales = 1 if n.op == "Upsample" or opset < 11 else 2
    out: dict[str, Any] = {"resize_axes": [int(x) for x in n.attrs["axes"]]
                           if n.attrs.get("axes") is not None else None}
    if n.op == "Resize" and opset >= 11 and given(3):
        out["sizes"] = _shape_target(ins[3])
    elif given(at_scales):
        v = _const(ins[at_scales])
        out["scales"] = None if v is None else [float(x) for x in v.ravel()]
    elif n.op == "Upsample" and "scales" in n.attrs:  # Upsample-7: an attribute
        out["scales"] = [float(x) for x in n.attrs["scales"]]
    return out


_Canon = tuple[str, list, dict[str, Any]]  # a node's IR op, inputs and attributes


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.gsg = onnx_external.import_graph(model)
        self.g = Graph(backend="onnx")
        self.meta = self._meta_tensors()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.alias = stored_casts(self.gsg)  # fp16/bf16 weights read through a widening Cast
        self.not_trainable: set[str] = set()
        for n in self.gsg.nodes:
            if n.op == "BatchNormalization":
                self.not_trainable.update(self.alias.get(t.name, t).name for t in n.inputs[3:5])

    def _meta_tensors(self) -> set[str]:
        meta: set[str] = set()
        for n in self.gsg.nodes:
            ins = [t for t in n.inputs if t.name]
            if n.op in _META_SOURCES or (ins and all(t.name in meta or isinstance(t, gs.Constant)
                                                      for t in ins) and any(t.name in meta for t in ins)):
                meta.update(t.name for t in n.outputs)
        return meta

    def tensor(self, t: gs.Tensor | None) -> str | None:
        if t is None or not t.name:
            return None
        t = self.alias.get(t.name, t)
        if t.name in self.g.tensors:
            return t.name
        if isinstance(t, gs.Constant):
            dt = _dtype_name(t.dtype) or "float32"  # from the proto: values are read by load
            self.g.add_tensor(Tensor(t.name, tuple(int(d) for d in t.shape), dt, PARAM,
                                     load=lambda c=t: _values(c),
                                     trainable=dt in _FLOAT and len(t.shape) >= 1
                                     and t.name not in self.not_trainable))
        else:
            shape = None if t.shape is None else tuple(
                int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in t.shape)
            kind = META if t.name in self.meta else ACTIVATION
            self.g.add_tensor(Tensor(t.name, shape, _dtype_name(t.dtype) if t.dtype is not None
                                     else "", kind))
        return t.name

    def build(self) -> Graph:
        for t in self.gsg.inputs:
            self.g.inputs.append(self.tensor(t))
        used: set[str] = set()
        for i, n in enumerate(self.gsg.nodes):
            if n.op == "Cast" and n.outputs and n.outputs[0].name in self.alias:
                continue  # its consumers read the stored weight itself
            op, ins, attrs = self._canon(n)
            name = n.name or f"{n.op}_{i}"
            while name in used:
                name = f"{name}_{i}"
            used.add(name)
            ins = [self.tensor(t) if isinstance(t, gs.Tensor) else t for t in ins]
            outs = [self.tensor(t) for t in n.outputs if t.name]
            if op != "meta" and outs and all(self.g.tensors[o].kind == META for o in outs):
                op = "meta"
            source = n.op if (n.domain or "") in ("", "ai.onnx") else f"{n.domain}.{n.op}"
            self.g.add_node(Node(name, op, ins, outs, attrs, source, handle=i))
        for t in self.gsg.outputs:
            self.g.outputs.append(self.tensor(t))
        return self.g

    # -- op mapping ------------------------------------------------------------------------
    def _canon(self, n: gs.Node) -> _Canon:
        """The IR op, inputs and attributes of ``n`` (by op family; "unknown" when none maps it)."""
        op = n.op
        ins = [self.alias.get(t.name, t) if t.name else t for t in n.inputs]
        data = [t for t in ins if t.name]
        if (n.domain or "") not in ("", "ai.onnx"):
            return "unknown", data, {"reason": f"op {n.domain}.{op} from a custom domain"}
        if any(t.name in self.meta for t in data) and all(
                t.name in self.meta or isinstance(t, gs.Constant) for t in data) or op in _META_SOURCES:
            return "meta", data, {}
        for family in (self._canon_layer, self._canon_pointwise, self._canon_norm,
                       self._canon_reduce, self._canon_layout):
            canon = family(n, ins, data)
            if canon is not None:
                return canon
        return "unknown", data, {}

    def _canon_layer(self, n: gs.Node, ins: list, data: list) -> _Canon | None:
        """Conv, Gemm and MatMul (a linear layer when its weight is a constant), else None."""
        op, a = n.op, n.attrs
        if op == "Conv":
            if isinstance(ins[1], gs.Constant):
                geo = {}
                if a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and ins[1].shape is not None:
                    nd = len(ins[1].shape) - 2
                    geo = {"stride": list(a.get("strides", [1] * nd)),
                           "pads": list(a.get("pads", [0] * 2 * nd)),
                           "dilation": list(a.get("dilations", [1] * nd))}
                return "conv", [ins[0], ins[1], ins[2] if len(ins) > 2 else None], {
                    "groups": a.get("group", 1), **geo}
            return "unknown", data, {"reason": "Conv with a run-time weight"}
        if op == "Gemm":
            b = ins[1]
            c = ins[2] if len(ins) > 2 and ins[2].name else None
            if a.get("transA", 0) or not isinstance(b, gs.Constant):
                return "unknown", data, {"reason": "Gemm with transA or a run-time weight"}
            if c is not None and (not isinstance(c, gs.Constant) or len(c.shape) != 1):
                return "unknown", data, {"reason": "Gemm with a non-vector bias"}
            return "linear", [ins[0], b, c], {"layout": "oi" if a.get("transB", 0) else "io"}
        if op == "MatMul":
            if isinstance(ins[1], gs.Constant) and len(ins[1].shape) == 2:
                return "linear", [ins[0], ins[1], None], {"layout": "io"}
            return "matmul", ins[:2], {}
        return None

    def _canon_pointwise(self, n: gs.Node, ins: list, data: list) -> _Canon | None:
        """Elementwise (several inputs) and unary ops, else None."""
        op = n.op
        if op in _ELEMENTWISE:
            return "elementwise", data, _elementwise_fn(op, ins)
        if op in _UNARY:
            if op == "Dropout" and len([t for t in n.outputs if t.name]) > 1:
                return "unknown", data, {"reason": "Dropout with a mask output"}
            return "unary", [ins[0]], dict(IDENTITY) if op in ("Identity", "Dropout") else (
                {"fn": "cast"} if op == "Cast" else {})
        return None

    def _canon_norm(self, n: gs.Node, ins: list, data: list) -> _Canon | None:
        """Batch, instance, layer (and RMS) and group normalisation, else None."""
        op, a = n.op, n.attrs
        if op == "BatchNormalization":
            if len([t for t in n.outputs if t.name]) > 1:
                return "unknown", data, {"reason": "BatchNormalization in training mode"}
            return "batchnorm", ins[:5], {"eps": float(a.get("epsilon", 1e-5))}
        if op == "InstanceNormalization":
            return "instancenorm", ins[:3], {}
        if op == "LayerNormalization":
            return "layernorm", [ins[0], ins[1], ins[2] if len(ins) > 2 and ins[2].name else None], {
                "axis": a.get("axis", -1)}
        if op == "SimplifiedLayerNormalization" or op == "RMSNormalization":
            return "layernorm", [ins[0], ins[1]], {"axis": a.get("axis", -1), "fn": "rms",
                                                   "eps": float(a.get("epsilon", 1e-5))}
        if op == "GroupNormalization":
            c = ins[0].shape[1] if ins[0].shape is not None and len(ins[0].shape) > 1 else None
            if isinstance(c, int) and len(ins) > 1 and ins[1].shape is not None and ins[1].shape[0] == c:
                return "groupnorm", ins[:3], {"groups": a["num_groups"]}
            return "unknown", data, {"reason": "GroupNormalization with per-group scale (opset 18)"}
        return None

    def _canon_reduce(self, n: gs.Node, ins: list, data: list) -> _Canon | None:
        """Pooling, reductions and softmax, else None."""
        op, a = n.op, n.attrs
        if op in _POOL:
            return "pool", [ins[0]], _resize_attrs(n, ins, self.opset) if op in _RESIZE else {}
        if op in _REDUCE:
            axes = a.get("axes")
            if axes is None and len(ins) > 1 and ins[1].name:
                v = _const(ins[1])
                if v is None:
                    return "unknown", data, {"reason": f"{op} with run-time axes"}
                axes = [int(x) for x in v.ravel()]
            if axes is None and a.get("noop_with_empty_axes", 0):
                return "unary", [ins[0]], {}
            return "reduce", [ins[0]], {"axes": axes, "keepdims": bool(a.get("keepdims", 1)),
                                        "fn": _REDUCE[op]}
        if op in ("Softmax", "LogSoftmax"):
            if self.opset < 13:
                return "unknown", data, {"reason": f"{op} before opset 13 flattens its input"}
            return "softmax", [ins[0]], {"axis": a.get("axis", -1)}
        return None

    def _canon_layout(self, n: gs.Node, ins: list, data: list) -> _Canon | None:
        """Padding, concatenation, splitting, slicing, reshapes, transposes, expansion and
        Gathers by constant indices, else None."""
        op, a = n.op, n.attrs
        if op == "Pad":
            return self._pad(n)
        if op == "Concat":
            return "concat", data, {"axis": a["axis"]}
        if op == "Split":
            return "split", [ins[0]], {"axis": a.get("axis", 0)}
        if op == "Slice":
            return self._slice(n)
        if op == "Reshape":
            return "reshape", [ins[0]], {"target": _shape_target(ins[1])}
        if op in ("Flatten", "Squeeze", "Unsqueeze"):
            return "reshape", [ins[0]], {"target": "auto"}
        if op == "Transpose":
            r = len(ins[0].shape) if ins[0].shape is not None else None
            perm = a.get("perm") or (list(range(r))[::-1] if r is not None else None)
            if perm is None:
                return "unknown", data, {"reason": "Transpose of unknown rank"}
            return "transpose", [ins[0]], {"perm": [int(p) for p in perm]}
        if op == "Expand":  # a target concatenated at run time: its constant pieces are known
            return "expand", [ins[0]], {"target": _shape_target(ins[1])}
        if op == "Gather" and ins[0].shape is not None and isinstance(ins[1], gs.Constant) \
                and len(ins[1].shape) == 0:
            r = len(ins[0].shape)
            axis = a.get("axis", 0) % r
            mp = [(ax, 0, ins[0].shape[ax], 1) for ax in range(r) if ax != axis]
            return "index", [ins[0]], {"map": mp}
        if op == "Gather" and ins[0].shape is not None and len(ins[0].shape) >= 2 \
                and isinstance(ins[1], gs.Constant) and ins[1].shape is not None and len(data) == 2:
            return "gather", data, {"axis": a.get("axis", 0) % len(ins[0].shape)}  # a bias table
        if op == "Gather" and isinstance(ins[0], gs.Constant) and len(ins[0].shape) >= 2 \
                and not isinstance(ins[1], gs.Constant) and len(data) == 2:
            return "gather", data, {"axis": a.get("axis", 0) % len(ins[0].shape)}  # an embedding
        return None

    def _pad(self, n: gs.Node):
        """Pad with constant pads (an attribute before opset 11, an input since; opset 18's
        optional axes input), as begins then ends over every axis."""
        ins, a = n.inputs, n.attrs
        data = [t for t in ins if t.name]
        x = ins[0]
        r = len(x.shape) if x.shape is not None else None
        pads = a.get("pads") if self.opset < 11 else (
            _const(ins[1]) if len(ins) > 1 and ins[1].name else None)
        if r is None or pads is None:
            return "unknown", data, {"reason": "Pad with run-time pads or unknown rank"}
        pads = [int(v) for v in np.ravel(pads)]
        attrs = {"mode": a.get("mode", "constant"), "value": _pad_value(n, self.opset)}
        if len(ins) > 3 and ins[3].name:
            axes = _const(ins[3])
            if axes is None:
                return "unknown", data, {"reason": "Pad with run-time axes"}
            axes = [int(v) % r for v in np.ravel(axes)]
            full = [0] * (2 * r)
            for i, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[i], pads[i + len(axes)]
            pads, attrs["pad_axes"] = full, axes
        if len(pads) != 2 * r:
            return "unknown", data, {"reason": "Pad with pads of the wrong length"}
        return "pad", [x], {"pads": pads, **attrs}

    def _slice(self, n: gs.Node):
        ins = n.inputs
        data = [t for t in ins if t.name]
        vals = [_const(t) if t.name else None for t in ins[1:]] + [None] * 4
        starts, ends, axes, steps = vals[:4]
        x = ins[0]
        if starts is None or ends is None or x.shape is None or (len(ins) > 3 and ins[3].name and axes is None) \
                or (len(ins) > 4 and ins[4].name and steps is None):
            return "unknown", data, {"reason": "Slice with run-time bounds"}
        r = len(x.shape)
        axes = list(range(len(starts))) if axes is None else [int(v) % r for v in axes.ravel()]
        steps = [1] * len(axes) if steps is None else [int(v) for v in steps.ravel()]
        mp: list = [(ax, 0, x.shape[ax], 1) for ax in range(r)]
        for ax, s0, e0, st in zip(axes, starts.ravel(), ends.ravel(), steps):
            size = x.shape[ax]
            if not isinstance(size, int):
                return "unknown", data, {"reason": "Slice on an axis of unknown size"}
            start, stop, step = slice(int(s0), int(e0), st).indices(size)
            mp[ax] = (ax, start, max(stop, start), step)
        return "index", [x], {"map": mp, "slice_axes": axes}


def to_ir(model: onnx.ModelProto) -> Graph:
    """Build the IR of a normalised model (see :func:`normalize`)."""
    with quiet():
        return _Builder(model).build()
