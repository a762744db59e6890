"""Build a raw ONNX graph (``onnx.helper``, opset 21) from a :class:`fuzz_models.Spec`.

The weights are the torch module's (``fuzz_torch.build``), so the raw graph computes the same
function; tests check that first, which keeps this builder honest. Ops are written the way a
hand-made or non-torch exporter would: BatchNormalization unfused, Gemm with either weight layout,
MatMul by an initializer plus Add, GroupNormalization, LayerNormalization, Split with sizes or
``num_outputs``, ReduceMean with axes as an input, Flatten, Global*Pool, CumSum.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from fuzz_spec import Spec

OPSET = 21


class _B:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shared: dict[tuple, str] = {}
        self.op_index = -1
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value, base="c", dtype=None) -> str:
        name = self.name(base)
        arr = np.asarray(value, dtype=dtype) if dtype else np.asarray(value)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def param(self, t: torch.Tensor, base: str) -> str:
        """One initializer per (op, role): a shared layer's users all read the same one."""
        key = (self.op_index, base)
        if key not in self.shared:
            self.shared[key] = self.const(t.detach().numpy().astype(np.float32), base)
        return self.shared[key]

    def node(self, op: str, ins, n_out=1, **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(ins), outs, name=self.name(op), **attrs))
        return outs

    def one(self, op, ins, **attrs) -> str:
        return self.node(op, ins, **attrs)[0]


def _act(b: _B, fn: str, x: str) -> str:
    if fn == "silu":
        return b.one("Mul", [x, b.one("Sigmoid", [x])])
    if fn == "leaky_relu":
        return b.one("LeakyRelu", [x], alpha=0.01)
    if fn == "gelu":
        return b.one("Gelu", [x])
    return b.one({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
                  "hardswish": "HardSwish"}[fn], [x])


def _linear(b: _B, mod, p, x: str, rank: int) -> str:
    if p["form"] == "module":
        w, bias = mod.weight.detach(), mod.bias
    elif p["form"] == "matmul":
        w, bias = mod.w.detach().t(), mod.b
    else:
        w, bias = mod.w.detach(), mod.b
    if rank == 2 and p["form"] != "matmul":  # Gemm, layout by form
        trans = p["form"] == "module"
        ins = [x, b.param(w, "W_oi") if trans else b.param(w.t(), "W_io")] + (
            [b.param(bias, "B")] if bias is not None else [])
        return b.one("Gemm", ins, transB=int(trans))
    y = b.one("MatMul", [x, b.param(w.t(), "W_io")])
    return b.one("Add", [y, b.param(bias, "B")]) if bias is not None else y


def _op(b: _B, spec: Spec, i: int, op, xs: list[str]) -> list[str]:
    if op.kind == "shared":  # the earlier op, applied to this input with the same tensors
        i, op = op.p["of"], type(op)(op.p["kind"], op.ins, spec.ops[op.p["of"]].p, op.outs)
    b.op_index = i
    p, k = op.p, f"o{i}"
    mod = b.model.m[k] if k in b.model.m else None
    x = xs[0] if xs else None
    rank = len(spec.shapes[op.ins[0]]) if op.ins else 0
    if op.kind == "conv":
        ins = [x, b.param(mod.weight, "W")] + ([b.param(mod.bias, "B")] if p["bias"] else [])
        pad = p["k"] // 2
        return b.node("Conv", ins, kernel_shape=[p["k"]] * 2, strides=[p["stride"]] * 2,
                      pads=[pad] * 4, group=p["groups"])
    if op.kind == "bn":
        ps = [b.param(getattr(mod, a), a) for a in ("weight", "bias", "running_mean", "running_var")]
        return b.node("BatchNormalization", [x] + ps, epsilon=mod.eps)
    if op.kind == "groupnorm":
        return b.node("GroupNormalization", [x, b.param(mod.weight, "gs"), b.param(mod.bias, "gb")],
                      num_groups=p["groups"], epsilon=mod.eps)
    if op.kind == "layernorm":
        return b.node("LayerNormalization", [x, b.param(mod.weight, "ls"), b.param(mod.bias, "lb")],
                      axis=-1, epsilon=mod.eps)
    if op.kind == "act":
        return [_act(b, p["fn"], x)]
    if op.kind in ("add", "mul"):
        return b.node("Add" if op.kind == "add" else "Mul", xs)
    if op.kind == "binop":
        return b.node("Sub" if p["fn"] == "sub" else "Max", xs)
    if op.kind == "expand_as":
        return b.node("Expand", [x, b.one("Shape", [xs[1]])])
    if op.kind == "expand":
        return b.node("Expand", [x, b.const(p["shape"], "shape", np.int64)])
    if op.kind == "scale":
        return b.node("Add" if p["fn"] == "add" else "Mul", [x, b.param(b.model.p[k], "s")])
    if op.kind == "cat":
        return b.node("Concat", xs, axis=p["dim"])
    if op.kind == "split":
        sizes = p["sizes"]
        if p["form"] == "chunk" and len(set(sizes)) == 1:
            return b.node("Split", [x], n_out=len(sizes), axis=p["dim"], num_outputs=len(sizes))
        return b.node("Split", [x, b.const(sizes, "sizes", np.int64)], n_out=len(sizes),
                      axis=p["dim"])
    if op.kind == "reshape":
        return b.node("Reshape", [x, b.const(p.get("arg", p["shape"]), "shape", np.int64)])
    if op.kind == "permute":
        return b.node("Transpose", [x], perm=list(p["perm"]))
    if op.kind == "transpose":
        perm = list(range(rank))
        perm[p["d0"]], perm[p["d1"]] = perm[p["d1"]], perm[p["d0"]]
        return b.node("Transpose", [x], perm=perm)
    if op.kind == "slice":
        return b.node("Slice", [x, b.const([p["start"]], "st", np.int64),
                                b.const([p["stop"]], "en", np.int64),
                                b.const([p["dim"]], "ax", np.int64),
                                b.const([p.get("step", 1)], "sp", np.int64)])
    if op.kind == "select":
        return b.node("Gather", [x, b.const(p["index"], "i", np.int64)], axis=p["dim"])
    if op.kind == "convt":
        return b.node("ConvTranspose", [x, b.param(mod.weight, "W"), b.param(mod.bias, "B")],
                      kernel_shape=[1, 1])
    if op.kind == "pool":
        if p["fn"] == "resize":
            return b.node("Resize", [x, "", b.const([1.0, 1.0, 2.0, 2.0], "scales", np.float32)],
                          mode="nearest")
        if p["fn"] in ("max", "avg"):
            return b.node("MaxPool" if p["fn"] == "max" else "AveragePool", [x],
                          kernel_shape=[2, 2], strides=[2, 2])
        if p["k"] == 1:
            return b.node("GlobalMaxPool" if p["fn"] == "adaptive_max" else "GlobalAveragePool", [x])
        h, w = spec.shapes[op.ins[0]][2:]
        return b.node("AveragePool", [x], kernel_shape=[h // 2, w // 2], strides=[h // 2, w // 2])
    if op.kind == "mean":
        return b.node("ReduceMean", [x, b.const(list(p["dims"]), "axes", np.int64)],
                      keepdims=int(p["keep"]))
    if op.kind == "flatten":
        if p["form"] == "view":
            return b.node("Reshape", [x, b.const([p["n"], -1], "shape", np.int64)])
        if p["form"] == "view_size":  # sizes read at run time: Shape -> Slice -> Concat
            n = b.one("Slice", [b.one("Shape", [x]), b.const([0], "st", np.int64),
                                b.const([1], "en", np.int64)])
            return b.node("Reshape", [x, b.one("Concat", [n, b.const([-1], "m1", np.int64)],
                                               axis=0)])
        if p["start"] == 1:
            return b.node("Flatten", [x], axis=1)
        return b.node("Reshape", [x, b.const(spec.shapes[op.outs[0]], "shape", np.int64)])
    if op.kind == "linear":
        return [_linear(b, mod, p, x, rank)]
    if op.kind == "cumsum":
        return b.node("CumSum", [x, b.const(p["dim"], "axis", np.int64)])
    if op.kind == "matmul":
        return b.node("MatMul", xs)
    if op.kind == "mulc":
        return b.node("Mul", [x, b.const(np.float32(p["c"]), "k")])
    if op.kind == "softmax":
        return b.node("Softmax", [x], axis=-1)
    raise ValueError(op.kind)


def build(spec: Spec, model: torch.nn.Module, inits_as_inputs: bool = False) -> onnx.ModelProto:
    """``inits_as_inputs``: list the float initializers among the graph inputs too (the
    pre-IR-4 convention some exporters keep; the initializer is the input's default)."""
    b = _B(model)
    env = [f"x{i}" for i in range(len(spec.inputs))]
    for i, op in enumerate(spec.ops):
        env.extend(_op(b, spec, i, op, [env[j] for j in op.ins]))
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(s))
              for i, s in enumerate(spec.inputs)]
    outputs, seen = [], set()
    for j in spec.outputs:
        name = env[j]
        if name in seen or name in {v.name for v in inputs}:  # an output listed twice: copy it
            name = b.one("Identity", [name])
        seen.add(name)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(spec.shapes[j])))
    if inits_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in b.inits if t.data_type == TensorProto.FLOAT]
    graph = helper.make_graph(b.nodes, "fuzz", inputs, outputs, b.inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                    producer_name="idapgraph-fuzz")
    model_proto.ir_version = 10
    onnx.checker.check_model(model_proto, full_check=True)
    return model_proto
