"""Bypassable blocks: residual branches ``y = skip + F(x)`` found with networkx dominators.

An ``add`` whose two inputs split at its immediate dominator ``d`` (or at the skip's producer when
a side input, e.g. an attention mask, joins the branch) is a residual block when one input (the
*branch*) is computed by nodes below ``d`` whose outputs feed nothing but the branch and the add
and are not model outputs; the branch may read other tensors (they lose a consumer). Bypassing removes the branch so the add becomes its
*skip* input (``x`` itself, or a projection such as ResNet's downsample); with mean substitution
the add keeps a constant: the branch's mean output over calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..ir.graph import ACTIVATION, Graph
from ..ir.ops import OPS

_ROOT = "\0root"


@dataclass
class Block:
    key: str  # stable name: "b{ordinal}" of the add among blocks, in execution order
    add: str  # the add node
    skip: str  # tensor the add becomes
    branch: str  # tensor the branch delivers to the add
    nodes: list[str] = field(default_factory=list)  # nodes of the branch (removed by a bypass)
    kind: str = "residual"


def find(graph: Graph) -> list[Block]:
    g = graph.nx.copy()
    for n in list(g.nodes):
        if g.in_degree(n) == 0:
            g.add_edge(_ROOT, n)
    if _ROOT not in g:
        return []
    idom = nx.immediate_dominators(g, _ROOT)
    outputs = set(graph.outputs)
    order = {n: i for i, n in enumerate(graph.nodes)}
    blocks: list[Block] = []
    for node in graph:
        if node.op != "elementwise" or node.attrs.get("fn") != "add":
            continue
        ins = [t for t in node.present_inputs() if graph.tensors[t].kind == ACTIVATION]
        if len(ins) != 2 or len(node.present_inputs()) != 2:
            continue
        yshape = graph.shape(node.outputs[0])
        if any(graph.shape(t) != yshape for t in ins):
            continue
        best = None
        for b in (0, 1):
            br, sk = ins[b], ins[1 - b]
            # the split point: the add's immediate dominator, or — when a side input such as an
            # attention mask joins the branch and only the virtual root dominates — the skip's producer
            d = idom.get(node.name)
            if d is None or d == _ROOT:
                d = graph.tensors[sk].producer
            if d is None:
                continue
            below = nx.descendants(g, d)
            prod = graph.tensors[br].producer
            if prod is None or prod == d or prod not in below:
                continue
            nodes = (nx.ancestors(g, prod) & below) | {prod}
            nodes.discard(node.name)
            sk_prod = graph.tensors[sk].producer
            if sk_prod in nodes:
                continue
            closed = graph.tensors[br].consumers == [node.name] and all(
                t not in outputs and set(graph.tensors[t].consumers) <= nodes | {node.name}
                for n in nodes for t in graph.nodes[n].outputs)
            if not closed or not any(OPS[graph.nodes[n].op].weighted for n in nodes):
                continue  # a block holds at least one layer (not e.g. an attention-mask add)
            if best is None or len(nodes) > len(best[2]):
                best = (sk, br, nodes)
        if best is not None:
            blocks.append(Block(f"b{len(blocks)}", node.name, best[0], best[1],
                                sorted(best[2], key=order.__getitem__)))
    return blocks


class BlockNorms:
    """Reducer: per block, the mean over samples of ‖F(x)‖ / (‖skip‖ + ε) (relative change)
    and of the ShortGPT block influence 1 − cos(skip, skip + F(x)); plus the branch's mean output
    (for mean substitution)."""

    def __init__(self, blocks: list[Block], eps: float = 1e-12) -> None:
        self.blocks = blocks
        self.eps = eps
        self.rel: dict[str, float] = {}
        self.influence: dict[str, float] = {}
        self.mean_sum: dict[str, np.ndarray] = {}
        self.n: dict[str, int] = {}

    @property
    def tensors(self) -> list[str]:
        return sorted({t for b in self.blocks for t in (b.skip, b.branch)})

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        for b in self.blocks:
            f, x = values.get(b.branch), values.get(b.skip)
            if f is None or x is None:
                continue
            f = np.asarray(f, dtype=np.float64)
            x = np.asarray(x, dtype=np.float64)
            n = f.shape[0]
            ff, xx = f.reshape(n, -1), x.reshape(n, -1)
            y = xx + ff
            nf, nx_, ny = (np.linalg.norm(a, axis=1) for a in (ff, xx, y))
            self.rel[b.key] = self.rel.get(b.key, 0.0) + float(np.sum(nf / (nx_ + self.eps)))
            cos = np.sum(xx * y, axis=1) / (nx_ * ny + self.eps)
            self.influence[b.key] = self.influence.get(b.key, 0.0) + float(np.sum(1 - cos))
            self.mean_sum[b.key] = self.mean_sum.get(b.key, 0) + f.sum(axis=0, keepdims=True)
            self.n[b.key] = self.n.get(b.key, 0) + n

    def score(self, key: str, kind: str = "relative") -> float:
        table = self.rel if kind == "relative" else self.influence
        return table[key] / self.n[key] if key in self.n else float("inf")

    def mean(self, key: str) -> np.ndarray | None:
        return self.mean_sum[key] / self.n[key] if key in self.n else None
