"""Bypassable blocks, found with networkx dominators.

* **Residual blocks** ``y = skip + F(x)``: an ``add`` whose two inputs split at its immediate
  dominator ``d`` (or at the skip's producer when a side input, e.g. an attention mask, joins the
  branch) is a residual block when one input (the *branch*) is computed by nodes below ``d`` whose
  outputs feed nothing but the branch and the add and are not model outputs; the branch may read
  other tensors (they lose a consumer). Bypassing removes the branch so the add becomes its
  *skip* input (``x`` itself, or a projection such as ResNet's downsample); with mean
  substitution the add keeps a constant: the branch's mean output over calibration data.
  Their ``kind`` says what the branch holds: ``attention`` (a product of two activations or a
  fused attention), ``mlp`` (fully connected layers only) or ``residual`` (convolutions).
* **Layers** of transformers: runs of residual blocks that repeat with a period (attention, MLP;
  attention, MLP; …), from the stream tensor ``x`` entering the first block to the stream tensor
  ``y`` entering the next layer (after a post-norm, if any). The run is single-entry
  single-exit apart from side inputs, and ``y`` has ``x``'s shape, so bypassing makes the layer
  an identity (``y := x``; with mean substitution ``y := x + mean(y − x)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from ..ir.graph import ACTIVATION, PARAM, Graph
from ..ir.ops import OPS

_ROOT = "\0root"


@dataclass
class Block:
    key: str  # stable name: "b{ordinal}" of the add among blocks, in execution order
    add: str  # the node whose output a bypass replaces: the add (for a layer, its last node)
    skip: str  # tensor the add becomes
    branch: str  # tensor the branch delivers to the add
    nodes: list[str] = field(default_factory=list)  # nodes of the branch (removed by a bypass)
    kind: str = "residual"  # residual | attention | mlp | layer

    def overlaps(self, other: "Block") -> bool:
        return bool(({self.add} | set(self.nodes)) & ({other.add} | set(other.nodes)))


BLOCK_KINDS = ("residual", "attention", "mlp", "layer")


def _kind(graph: Graph, nodes) -> str:
    ops = {graph.nodes[n].op for n in nodes}
    if ops & {"matmul", "attention"}:
        return "attention"
    if "conv" in ops:
        return "residual"
    return "mlp"


def find(graph: Graph) -> list[Block]:
    g = graph.nx.copy()
    for n in list(g.nodes):
        if g.in_degree(n) == 0:
            g.add_edge(_ROOT, n)
    if _ROOT not in g:
        return []
    idom = nx.immediate_dominators(g, _ROOT)
    order = {n: i for i, n in enumerate(graph.nodes)}
    pos = {n: i for i, n in enumerate(nx.topological_sort(g))}
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
            prod = graph.tensors[br].producer
            if prod is None or prod == d:
                continue
            nodes = _between(g, pos, list(g.successors(d)), prod)  # below d, up to prod
            if prod not in nodes:
                continue
            nodes.discard(node.name)
            sk_prod = graph.tensors[sk].producer
            if sk_prod in nodes:
                continue
            nodes = _exclusive(graph, g, nodes, node.name)
            if graph.tensors[br].consumers != [node.name] or prod not in nodes or not any(
                    OPS[graph.nodes[n].op].weighted for n in nodes):
                continue  # a block holds at least one layer (not e.g. an attention-mask add)
            if best is None or len(nodes) > len(best[2]):
                best = (sk, br, nodes)
        if best is not None:
            blocks.append(Block(f"b{len(blocks)}", node.name, best[0], best[1],
                                sorted(best[2], key=order.__getitem__), _kind(graph, best[2])))
    return blocks + _layers(graph, g, blocks, order, pos)


def _between(g: nx.DiGraph, pos: dict[str, int], sources: list[str], sink: str) -> set[str]:
    """The nodes that are ``sources`` or their descendants and also ``sink`` or its ancestors.
    Walks back from ``sink`` only through nodes not before the earliest source in topological
    order ``pos``, then forward from the sources inside what it found: the cost is the size of
    that window, not of the graph (``nx.descendants``/``ancestors`` per block made the pass
    quadratic in a stack of blocks)."""
    if not sources:
        return set()
    lo = min(pos[s] for s in sources)
    up, stack = {sink}, [sink]
    while stack:
        for p in g.predecessors(stack.pop()):
            if p not in up and pos[p] >= lo:
                up.add(p)
                stack.append(p)
    out = {s for s in sources if s in up}
    stack = list(out)
    while stack:
        for c in g.successors(stack.pop()):
            if c in up and c not in out:
                out.add(c)
                stack.append(c)
    return out


def _is_check(graph: Graph, name: str) -> bool:
    """A metadata check (torch.export's ``_assert_tensor_metadata``): a meta node whose outputs
    nothing reads. It goes with the tensor it checks."""
    node = graph.nodes[name]
    return node.op == "meta" and not any(
        graph.tensors[t].consumers or t in graph.outputs for t in node.outputs)


def _exclusive(graph: Graph, g: nx.DiGraph, nodes: set[str], sink: str) -> set[str]:
    """The part of ``nodes`` that computes only for ``sink``: nodes whose outputs are read
    elsewhere (or are model outputs) — e.g. shape arithmetic or an attention mask shared by
    every layer — stay, with everything they need, and are not part of the block. Metadata
    checks of the block's tensors join the block."""
    outputs = set(graph.outputs)
    nodes = nodes | {c for n in nodes for t in graph.nodes[n].outputs
                     for c in graph.tensors[t].consumers if _is_check(graph, c)}
    inside = nodes | {sink}
    shared = [n for n in nodes for t in graph.nodes[n].outputs
              if t in outputs or not set(graph.tensors[t].consumers) <= inside]
    stay: set[str] = set()
    while shared:
        n = shared.pop()
        if n not in stay:
            stay.add(n)
            shared.extend(p for p in g.predecessors(n) if p in nodes)
    return nodes - stay


def _stream_next(graph: Graph, tensor: str) -> str | None:
    """The output of the single shape-preserving one-activation-input node reading ``tensor``
    (a post-norm or activation on the residual stream), if that is its only consumer (metadata
    checks such as torch.export's ``_assert_tensor_metadata`` read it without using it)."""
    cons = [c for c in graph.tensors[tensor].consumers if not _is_check(graph, c)]
    if len(cons) != 1 or tensor in graph.outputs:
        return None
    node = graph.nodes[cons[0]]
    acts = [t for t in node.present_inputs() if graph.tensors[t].kind == ACTIVATION]
    if acts != [tensor] or len(node.outputs) < 1 or graph.shape(node.outputs[0]) != graph.shape(
            tensor) or node.op not in ("layernorm", "batchnorm", "unary", "groupnorm"):
        return None
    return node.outputs[0]


def _layers(graph: Graph, g: nx.DiGraph, residual: list[Block], order, pos) -> list[Block]:
    """Transformer layers: periodic runs of attention/MLP residual blocks chained on one stream."""
    if not any(b.kind == "attention" for b in residual):
        return []
    # the chain: the add of block i reaches the skip of block i+1 through post-norms only
    tails: list[int] = []
    for a, b in zip(residual, residual[1:]):
        t, hops = graph.nodes[a.add].outputs[0], 0
        while t is not None and t != b.skip:
            t, hops = _stream_next(graph, t), hops + 1
        if t is None:
            return []  # not one stream (e.g. parallel branches): no layers
        tails.append(hops)
    kinds = [b.kind for b in residual]
    n = len(kinds)
    period = next((p for p in range(1, n + 1) if n % p == 0
                   and all(kinds[i] == kinds[i % p] for i in range(n))
                   and all(tails[i] == tails[i % p] for i in range(len(tails)))), n)
    if period == n and n > 2:
        return []
    last_tail = tails[period - 1] if len(tails) >= period else 0
    layers: list[Block] = []
    for j in range(0, n, period):
        x = residual[j].skip
        if j + period < n:
            y = residual[j + period].skip
        else:
            y = graph.nodes[residual[-1].add].outputs[0]
            for _ in range(last_tail):
                y = y and _stream_next(graph, y)
        if y is None or graph.shape(y) != graph.shape(x):
            continue
        last = graph.tensors[y].producer
        start = graph.tensors[x].consumers
        nodes = _exclusive(graph, g, _between(g, pos, start, last) - {last}, last) | {last}
        layers.append(Block(f"layer{len(layers)}", last, x, y,
                            sorted(nodes, key=order.__getitem__), "layer"))
    return layers


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
            if b.kind == "layer":  # the branch tensor is the layer's output y = x + (y - x)
                f = f - x
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


def branch_params(graph: Graph, block: Block) -> int:
    """Trainable parameters used only by the block's branch (what a bypass removes)."""
    inside = set(block.nodes)
    total = 0
    for t in {t for n in block.nodes for t in graph.nodes[n].present_inputs()}:
        ten = graph.tensors[t]
        if ten.kind == PARAM and ten.trainable and set(ten.consumers) <= inside:
            s = graph.shape(t)
            total += int(np.prod(s, dtype=np.int64)) if s and all(d is not None for d in s) else 1
    return total


def fit_mean(mean: np.ndarray, shape, budget: int) -> np.ndarray:
    """The constant that replaces a bypassed branch, from its mean output ``mean`` (batch axis
    kept as 1): per position when that is no larger than ``budget`` (the branch's parameters, so
    a bypass never grows the model) and every axis is static in ``shape`` (the IR shape; a
    symbolic axis such as a sequence length must be averaged out). Otherwise the best
    one-axis mean (e.g. per channel) within the budget, by squared distance to the full mean,
    or the scalar mean."""
    mean = np.asarray(mean)
    static = [i for i in range(1, mean.ndim)
              if shape is not None and i < len(shape) and shape[i] is not None]
    dims = tuple(range(1, mean.ndim))
    if len(static) == mean.ndim - 1 and mean.size <= budget:
        return mean
    best = mean.mean(axis=dims, keepdims=True)
    err = float(np.sum((mean - best) ** 2))
    for i in static:
        if mean.shape[i] > budget:
            continue
        cand = mean.mean(axis=tuple(d for d in dims if d != i), keepdims=True)
        e = float(np.sum((mean - cand) ** 2))
        if e < err:
            best, err = cand, e
    return best
