"""Large synthetic ONNX graphs for the analysis-scaling check (``tests/test_scale.py``,
``tools/bench_scale.py``): a stack of residual blocks with tiny tensors, so the node count, not
the arithmetic, sets the cost.

Each block is one of three kinds, in turn: a residual conv block (Conv, BatchNormalization,
Relu, Conv, BatchNormalization, Add, Relu), a split block (Split into halves, a Conv + Relu on
each, Concat, Add) and a residual MLP-style block over the channel axis (1x1 Conv, Relu, 1x1 Conv,
Add). Concat, Split and the residual Adds exercise channel coupling.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NODES_PER_CYCLE = 7 + 7 + 4  # the three kinds of block, in order


class _Builder:
    def __init__(self, channels: int, seed: int) -> None:
        self.c = channels
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value: np.ndarray) -> str:
        t = numpy_helper.from_array(value.astype(np.float32), self.name("w"))
        self.inits.append(t)
        return t.name

    def node(self, op: str, ins: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name("t") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, name=self.name(op), **attrs))
        return outs

    def conv(self, x: str, c_in: int, c_out: int, k: int) -> str:
        w = self.const(self.rng.standard_normal((c_out, c_in, k, k)) * 0.05)
        b = self.const(self.rng.standard_normal(c_out) * 0.01)
        return self.node("Conv", [x, w, b], pads=[k // 2] * 4)[0]

    def bn(self, x: str, c: int) -> str:
        p = [self.const(v) for v in (1 + 0.1 * self.rng.standard_normal(c),
                                     0.1 * self.rng.standard_normal(c),
                                     0.1 * self.rng.standard_normal(c),
                                     1 + 0.1 * self.rng.random(c))]
        return self.node("BatchNormalization", [x, *p])[0]

    def residual(self, x: str) -> str:
        c = self.c
        h = self.node("Relu", [self.bn(self.conv(x, c, c, 3), c)])[0]
        h = self.bn(self.conv(h, c, c, 3), c)
        return self.node("Relu", [self.node("Add", [x, h])[0]])[0]

    def split(self, x: str) -> str:
        c, half = self.c, self.c // 2
        sizes = numpy_helper.from_array(np.array([half, c - half], np.int64), self.name("s"))
        self.inits.append(sizes)
        a, b = self.node("Split", [x, sizes.name], 2, axis=1)
        a = self.node("Relu", [self.conv(a, half, half, 3)])[0]
        b = self.conv(b, c - half, c - half, 1)
        return self.node("Add", [x, self.node("Concat", [a, b], axis=1)[0]])[0]

    def mlp(self, x: str) -> str:
        h = self.node("Relu", [self.conv(x, self.c, 2 * self.c, 1)])[0]
        return self.node("Add", [x, self.conv(h, 2 * self.c, self.c, 1)])[0]


def build(n_nodes: int, channels: int = 8, size: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A model of about ``n_nodes`` nodes (whole blocks; at least one of each kind)."""
    b = _Builder(channels, seed)
    x = b.node("Relu", [b.conv("input", channels, channels, 3)])[0]  # a stem
    kinds = (b.residual, b.split, b.mlp)
    i = 0
    while len(b.nodes) < n_nodes or i < len(kinds):
        x = kinds[i % len(kinds)](x)
        i += 1
    graph = helper.make_graph(
        b.nodes, f"scale_{n_nodes}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, size, size])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
