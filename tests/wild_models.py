"""Small models and ONNX variants for the "inputs seen in the wild" matrix (tests/test_wild.py):
a CNN and a transformer block in every opset, with symbolic dims, fp16/bf16 weights, local
functions, tied weights and several inputs/outputs. Random weights, nothing downloaded."""

from __future__ import annotations

import io
import warnings

import ml_dtypes
import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper


class CNN(nn.Module):
    """conv/bn/relu, a residual add, a strided conv, global pooling, a linear head."""

    def __init__(self, bias: bool = True, bn: bool = True) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=bias), norm(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=bias), norm(16)
        self.c3, self.b3 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=bias), norm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Block(nn.Module):
    """A pre-norm transformer layer: fused QKV, 4 heads, GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.ln1, self.qkv, self.o = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 64), nn.Linear(64, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class Twice(nn.Module):
    """One conv module called twice (its weight read by two Conv nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.shared = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.c0(x))
        x = F.relu(self.shared(F.relu(self.shared(x))))
        return self.fc(x.mean((2, 3)))


class TiedLM(nn.Module):
    """A GPT-2-like toy: the LM head is the token embedding (tied), one MLP block."""

    def __init__(self, vocab: int = 50, d: int = 32) -> None:
        super().__init__()
        self.wte, self.ln = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 64), nn.Linear(64, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids):
        h = self.wte(ids)
        h = h + self.down(F.gelu(self.up(self.ln(h))))
        return self.head(h)


class TwoInTwoOut(nn.Module):
    """Image + side vector in; logits and an intermediate feature map out."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 24, 3, padding=1)
        self.c3, self.aux, self.fc = nn.Conv2d(24, 32, 3, padding=1), nn.Linear(6, 32), nn.Linear(32, 10)

    def forward(self, x, v):
        feat = F.relu(self.c2(F.relu(self.c1(x))))
        g = F.relu(self.c3(feat)).mean((2, 3)) + F.relu(self.aux(v))
        return self.fc(g), feat


def export(model: nn.Module, args: tuple, *, dynamo: bool = False, opset: int | None = None,
           **kw) -> onnx.ModelProto:
    """TorchScript (``dynamo=False``, ``opset`` default 17) or dynamo export, quietly."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, args, dynamo=True, verbose=False, opset_version=opset,
                                     **kw)
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, args, f, dynamo=False, opset_version=opset or 17, **kw)
        return onnx.load_from_string(f.getvalue())


def store_weights_as(model: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """Every float32 initializer of rank >= 1 stored as ``float16`` or ``bfloat16`` and widened
    by a Cast to float32 before use (weight-only low precision, fp32 compute)."""
    np_dt, onnx_dt = {"float16": (np.float16, TensorProto.FLOAT16),
                      "bfloat16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16)}[dtype]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits, casts = [], []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1:
            low = numpy_helper.from_array(numpy_helper.to_array(t).astype(np_dt), f"{t.name}_lp")
            assert low.data_type == onnx_dt
            inits.append(low)
            casts.append(helper.make_node("Cast", [low.name], [t.name], to=TensorProto.FLOAT,
                                          name=f"{t.name}_widen"))
        else:
            inits.append(t)
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def tied_matmuls() -> onnx.ModelProto:
    """Two inputs, two MatMuls reading one initializer W (8x16), each followed by Relu and its
    own down projection to an output."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
            for n, s in (("W", (8, 16)), ("D1", (16, 4)), ("D2", (16, 4)))]
    nodes = [helper.make_node("MatMul", ["a", "W"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["b", "W"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r1", "D1"], ["o1"]),
             helper.make_node("MatMul", ["r2", "D2"], ["o2"])]
    g = helper.make_graph(nodes, "tied", [_vi("a", TensorProto.FLOAT, ["N", 8]),
                                          _vi("b", TensorProto.FLOAT, ["N", 8])],
                          [_vi("o1", TensorProto.FLOAT, ["N", 4]), _vi("o2", TensorProto.FLOAT, ["N", 4])],
                          init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def with_local_function() -> onnx.ModelProto:
    """A local function ``lib.Dense(x, w, b) = Relu(x @ w + b)`` called twice, then a plain
    MatMul head: built with ``onnx.helper.make_function``."""
    rng = np.random.default_rng(1)
    fn = helper.make_function(
        "lib", "Dense", ["x", "w", "b"], ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        [helper.make_opsetid("", 17)])
    init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
            for n, s in (("w1", (8, 24)), ("b1", (24,)), ("w2", (24, 24)), ("b2", (24,)),
                         ("head", (24, 3)))]
    nodes = [helper.make_node("Dense", ["x", "w1", "b1"], ["h1"], domain="lib"),
             helper.make_node("Dense", ["h1", "w2", "b2"], ["h2"], domain="lib"),
             helper.make_node("MatMul", ["h2", "head"], ["y"])]
    g = helper.make_graph(nodes, "fn", [_vi("x", TensorProto.FLOAT, ["N", 8])],
                          [_vi("y", TensorProto.FLOAT, ["N", 3])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid("lib", 1)], functions=[fn])


def bf16_compute() -> onnx.ModelProto:
    """float32 in and out, a bfloat16 MatMul in between (no onnxruntime CPU kernel)."""
    w = numpy_helper.from_array(np.ones((8, 4), ml_dtypes.bfloat16), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "w"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "bf16", [_vi("x", TensorProto.FLOAT, [2, 8])],
                          [_vi("y", TensorProto.FLOAT, [2, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
