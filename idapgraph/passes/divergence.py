"""IDAP++ information-flow divergence of channels (DESIGN.md §1).

For a conv/linear layer with weight ``W`` and output ``Y``, output channel ``c`` scores
``δ_c = rms over calibration samples of ‖A[:, c]‖₂ · ‖W[c]‖₂ / fan_in``, where ``A`` is ``Y``
after the BatchNorm/activation chain that follows it (``|Y|`` when there is none) and
``fan_in = C_in/groups · k_h · k_w`` (``in_features`` for linear). A BatchNorm right after the
layer is folded into ``W`` first (its per-channel scale), so a torch module and its ONNX export
(where the exporter folded the BN) score the same. Symmetrically, a layer that
*consumes* channel ``c`` scores ``‖X[:, c]‖₂ · ‖W[:, c]‖₂ / fan_out``: the signal that flows
through the channel into it. A coupled group's unit score is the mean over its member layers of
these scores, each divided by that layer's mean (see :func:`idapgraph.passes.scoring.combine`).

The pass never runs a model: a runner feeds a :class:`~idapgraph.passes.stats.ChannelStats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import ACTIVATION, Graph
from ..ir.ops import Space, batchnorm_scale, channel_axis, weight_axes, weighted_nodes
from .scoring import combine
from .stats import ChannelStats

_CHAIN = {"batchnorm", "instancenorm", "unary"}


@dataclass(frozen=True)
class Tap:
    """Where a layer's channel activity is measured: ``tensor`` along ``axis``."""

    node: str
    role: str  # "out" (produces the channel) or "in" (consumes it)
    tensor: str
    axis: int
    fan: int  # weight entries per channel on the other side
    bn: str | None = None  # a BatchNorm right after the layer: its scale is part of the weight


def _follow_chain(graph: Graph, t: str) -> str:
    """Follow ``t`` through what acts on each channel alone: BatchNorm, activations, stored
    per-channel or scalar operands (a MatMul's bias, which ONNX exports as its own Add; layer
    scales), and activations that exporters spell out as several nodes (erf-GELU, SiLU as
    x·sigmoid(x)), so that both backends measure at the same tensor."""
    while t not in graph.outputs:
        cons = graph.tensors[t].consumers
        n = graph.nodes[cons[0]] if len(cons) == 1 else None
        if n is not None and len(n.outputs) == 1 and (
                n.op in _CHAIN and n.inputs[0] == t or _with_stored_operands(graph, n, t)):
            t = n.outputs[0]
            continue
        end = _pointwise_end(graph, t) if len(cons) > 1 else None
        if end is None:
            return t
        t = end
    return t


def _with_stored_operands(graph: Graph, n, t: str) -> bool:
    """An elementwise op of ``t`` and stored tensors only (``t + b``, ``t * 0.5``, ``t * γ``)."""
    if n.op != "elementwise" or graph.shape(n.outputs[0]) != graph.shape(t):
        return False
    others = [x for x in n.present_inputs() if x != t]
    return t in n.present_inputs() and all(graph.tensors[x].kind != ACTIVATION for x in others)


def _pointwise_end(graph: Graph, t: str, limit: int = 12) -> str | None:
    """If the nodes reading ``t`` start an elementwise sub-graph of ``t`` and stored operands
    only, of ``t``'s shape, that closes in one tensor (``x * Φ(x)``: Div, Erf, Add, Mul), that
    tensor."""
    region: set[str] = set()
    produced = [t]
    for _ in range(limit):
        open_ = [x for x in produced if x in graph.outputs
                 or any(c not in region for c in graph.tensors[x].consumers)]
        if len(open_) == 1 and open_[0] != t:
            return open_[0]
        ready = None
        for x in open_:
            for c in graph.tensors[x].consumers:
                n = graph.nodes[c]
                if c in region or n.op not in ("elementwise", "unary") or len(n.outputs) != 1 \
                        or graph.shape(n.outputs[0]) != graph.shape(t):
                    continue
                if all(i in produced or graph.tensors[i].kind != ACTIVATION
                       for i in n.present_inputs()):
                    ready = n
                    break
            if ready is not None:
                break
        if ready is None:
            return None
        region.add(ready.name)
        produced.append(ready.outputs[0])
    return None


def _bn_after(graph: Graph, y: str) -> str | None:
    cons = graph.tensors[y].consumers
    if len(cons) == 1 and graph.nodes[cons[0]].op == "batchnorm" and y not in graph.outputs:
        return cons[0]
    return None


def taps(graph: Graph) -> dict[Space, Tap]:
    """For every weighted layer's output- and input-channel weight axis, where to measure it."""
    out: dict[Space, Tap] = {}
    for node in weighted_nodes(graph):
        w = node.inputs[1]
        wt = graph.tensors[w] if w is not None else None
        if wt is None or wt.shape is None or len(wt.shape) < 2 or None in wt.shape:
            continue
        out_ax, in_ax = weight_axes(node)
        y, x = node.outputs[0], node.inputs[0]
        ry, rx = graph.tensors[y].rank, graph.tensors[x].rank
        if not ry or not rx:
            continue
        numel = int(np.prod(wt.shape))
        bn = _bn_after(graph, y)
        out[Space(w, out_ax)] = Tap(node.name, "out", _follow_chain(graph, y), channel_axis(node, ry),
                                    numel // wt.shape[out_ax], bn)
        if int(node.attrs.get("groups", 1)) == 1:
            out[Space(w, in_ax)] = Tap(node.name, "in", x, channel_axis(node, rx),
                                       numel // wt.shape[in_ax], bn)
    return out


def requests(graph: Graph, coupling: Coupling) -> tuple[dict[Space, Tap], ChannelStats]:
    """The taps of every weight axis in a prunable group, and a reducer collecting them."""
    all_taps = taps(graph)
    needed = {s for g in coupling.groups for m in g.members for s in m.spaces if s in all_taps}
    used = {s: all_taps[s] for s in needed}
    return used, ChannelStats({(tp.tensor, tp.axis) for tp in used.values()})


def channel_scores(graph: Graph, tap: Tap, weight: Space, norms: ChannelStats,
                   value=None) -> np.ndarray | None:
    """δ per index of ``weight``'s axis (see module doc); None when the activity was not measured.
    ``value(name)`` reads parameters (default: the graph's own)."""
    act = norms.rms_norm(tap.tensor, tap.axis)
    if act is None:
        return None
    read = value if value is not None else (lambda n: graph.tensors[n].value())
    w = np.asarray(read(weight.tensor), dtype=np.float64)
    if tap.bn is not None:  # BN after the layer rescales its output channels: fold it in, so the
        # score is the same as on an export where the exporter folded the BN into the weights
        out_ax = 1 - weight.axis if tap.role == "in" else weight.axis
        factor = batchnorm_scale(graph.nodes[tap.bn], read)
        if factor is not None:
            factor = np.abs(factor)
            shape = [1] * w.ndim
            shape[out_ax] = -1
            if w.shape[out_ax] == np.size(factor):
                w = w * np.reshape(factor, shape)
    other = tuple(a for a in range(w.ndim) if a != weight.axis)
    wn = np.sqrt(np.sum(w * w, axis=other))
    if act.shape != wn.shape:
        return None
    return act * wn / max(tap.fan, 1)


def scores(graph: Graph, coupling: Coupling, used: dict[Space, Tap], norms: ChannelStats,
           value=None) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Per-group unit scores, and per-layer output-channel δ (the annotation ``analyze`` shows).
    ``value(name)`` reads parameters, e.g. those of a model with some channels zeroed."""
    cache: dict[Space, np.ndarray | None] = {}

    def delta(s: Space):
        if s not in cache:
            cache[s] = channel_scores(graph, used[s], s, norms, value) if s in used else None
        return cache[s]

    def term(g, m, s):
        d = delta(s)
        return None if d is None else d[m.index].sum(axis=1)

    per_node = {tp.node: delta(s) for s, tp in used.items() if tp.role == "out" and delta(s) is not None}
    return combine(coupling, term), per_node
