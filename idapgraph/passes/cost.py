"""Cost analysis: parameters and FLOPs per node and in total.

FLOPs follow the convention of torchvision's model table and Torch-Pruning's counter: one
multiply-accumulate counts as one FLOP for conv/linear/matmul (bias adds one per output element);
elementwise, activation, norm and pooling ops count one (norms two) per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..ir.graph import PARAM, Graph
from ..ir.ops import OPS, weighted_nodes


@dataclass
class Cost:
    flops: int
    params: int
    per_node: dict[str, int] = field(default_factory=dict)


def _bias_add(graph: Graph, node, shape) -> int:
    """A bias added by its own node (ONNX exports MatMul + Add) costs what a linear layer's own
    bias costs (2 per output element), so both spellings of a layer count the same."""
    if node.op != "elementwise" or node.attrs.get("fn") != "add" or len(node.present_inputs()) != 2:
        return 0
    a, b = node.present_inputs()
    kinds = (graph.tensors[a].kind, graph.tensors[b].kind)
    if kinds.count(PARAM) != 1:
        return 0
    vec = shape(a if kinds[0] == PARAM else b)
    act = shape(b if kinds[0] == PARAM else a)
    producer = graph.tensors[b if kinds[0] == PARAM else a].producer
    if not vec or len(vec) != 1 or not act or vec[0] != act[-1] or producer is None or \
            graph.nodes[producer].op != "linear":
        return 0
    return 2 * math.prod(1 if d is None else int(d) for d in shape(node.outputs[0]))


def node_cost(graph: Graph, node, shape: Callable[[str], tuple]) -> int:
    """FLOPs of ``node`` under tensor ``shape``\\ s."""
    return int(OPS[node.op].cost(node, shape)) + _bias_add(graph, node, shape)


def param_count(tensor, shape: Callable[[str], tuple],
                removed: set[str] | frozenset = frozenset()) -> int:
    """Elements of ``tensor`` if it is a trainable parameter of fully known ``shape`` read by a
    node not ``removed``, else 0."""
    if tensor.kind != PARAM or not tensor.trainable or \
            not any(c not in removed for c in tensor.consumers):
        return 0
    s = shape(tensor.name)
    if s is None or any(d is None for d in s):
        return 0
    return math.prod(int(d) for d in s)


def count(graph: Graph, shape: Callable[[str], tuple] | None = None,
          removed: set[str] | frozenset = frozenset()) -> Cost:
    """Count FLOPs and trainable parameters, optionally under changed tensor ``shape``\\ s and
    without the ``removed`` nodes (bypassed blocks)."""
    shape = shape or graph.shape
    per_node = {n.name: node_cost(graph, n, shape) for n in graph if n.name not in removed}
    params = sum(param_count(t, shape, removed) for t in graph.tensors.values())
    return Cost(flops=sum(per_node.values()), params=params, per_node=per_node)


class Recounter:
    """:func:`count`'s totals ``(flops, params)`` of one graph under a sequence of shapes, each
    differing from the one before on a known set of tensors: only the nodes that read or write
    those are counted again. A search over candidate shapes (selection's over prefixes of the
    candidate list) then costs what it changes, not the whole graph per probe."""

    def __init__(self, graph: Graph, base: Cost) -> None:
        """``base``: ``count(graph)``, the totals under the graph's own shapes."""
        self.graph = graph
        self.flops, self.params = base.flops, base.params
        self.node_flops = dict(base.per_node)
        self.param_elems: dict[str, int] = {}

    def update(self, changed: set[str], shape: Callable[[str], tuple]) -> tuple[int, int]:
        """The totals under ``shape``, which differs from the previous call's (first: the
        graph's) only on the tensors ``changed``."""
        g = self.graph
        touched = {n for t in changed for n in (*g.tensors[t].consumers, g.tensors[t].producer)
                   if n is not None}
        for name in touched:
            new = node_cost(g, g.nodes[name], shape)
            self.flops += new - self.node_flops[name]
            self.node_flops[name] = new
        for t in changed:
            tensor = g.tensors[t]
            old = self.param_elems.get(t)
            new = param_count(tensor, shape)
            self.params += new - (param_count(tensor, g.shape) if old is None else old)
            self.param_elems[t] = new
        return self.flops, self.params


def layer_changes(graph: Graph, before: Cost, after: Cost, shape: Callable[[str], tuple],
                  removed: set[str] | frozenset = frozenset()) -> list[dict]:
    """Every conv/linear layer whose output channels or FLOPs differ between ``before`` and
    ``after`` (``shape``: the tensor shapes after; ``removed``: bypassed nodes), in execution
    order: ``{"layer", "source", "channels_before", "channels_after", "flops_before",
    "flops_after", "bypassed"}``."""
    from ..ir.ops import weight_axes

    out = []
    for n in weighted_nodes(graph):
        w = n.inputs[1]
        ws = graph.shape(w) if w is not None else None
        if not ws:
            continue
        ax = weight_axes(n)[0]
        gone = n.name in removed
        cb = ws[ax]
        ca = 0 if gone else (shape(w) or ws)[ax]
        fb, fa = before.per_node.get(n.name, 0), after.per_node.get(n.name, 0)
        if (cb, fb) != (ca, fa) or gone:
            out.append({"layer": n.name, "source": n.source, "channels_before": cb,
                        "channels_after": ca, "flops_before": fb, "flops_after": fa,
                        "bypassed": gone})
    return out
