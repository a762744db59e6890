"""Allocation by measured loss: how many units each channel group keeps when the groups' losses
are measured on one scale (calibration output error of cutting that group alone), chosen
greedily by loss per unit of cost -- the FLOPs/params counterpart of the latency MILP's
measured weighting (``measure_groups``). Which units go within a group stays the scores'."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import Graph
from ..ir.plan import Plan
from . import cost as cost_pass
from .latency import measured_loss
from .prune import shape_fn
from .select import Selection, lowest_units, min_kept, quanta, unit_widths


def options(n: int, quantum: int, min_keep: float) -> list[int]:
    """The counts a group of ``n`` units may keep, largest first: ``n`` and every multiple of
    ``quantum`` from :func:`~idapgraph.passes.select.min_kept` up (none but ``n`` when the
    group is no wider than one quantum)."""
    if n <= quantum:
        return [n]
    lo = min_kept(n, min_keep, quantum)
    return [n] + list(range((n - 1) // quantum * quantum, lo - 1, -quantum))


def probe_counts(n: int, quantum: int, min_keep: float, shares: Sequence[float]) -> list[int]:
    """The allowed kept counts (:func:`options`) nearest to ``shares`` of ``n``: where a
    group's loss is measured."""
    allowed = options(n, quantum, min_keep)[1:]
    if not allowed:
        return []
    return sorted({min(allowed, key=lambda k: (abs(k - s * n), k)) for s in shares},
                  reverse=True)


def allocate(graph: Graph, coupling: Coupling, scores: list[np.ndarray],
             losses: list[dict[int, float]], *, flops: float | None = None,
             params: float | None = None, min_keep: float = 0.1,
             round_to: int | None | Sequence[int] = None) -> Selection:
    """Remove units until ``flops``/``params`` (fractions of the original) are met, each step
    taking one group down to its next allowed count (:func:`options`) where that adds the least
    measured loss per unit of cost saved (the FLOPs and params fractions it saves, for the
    targets still unmet); then, while the targets stay met, groups are given back a step where
    that avoids the most loss (the last greedy step can overshoot). ``losses[i]``: group
    ``i``'s kept count -> calibration output error, interpolated between measurements along
    its scores (:func:`idapgraph.passes.latency.measured_loss`); the units removed are each
    group's lowest-scoring. Losses of different groups are added: cuts that compound are not
    seen."""
    allowed = [options(g.n_units, int(q), min_keep)
               for g, q in zip(coupling.groups, quanta(coupling, round_to))]
    st = _Counts(graph, coupling, allowed, flops, params)
    loss = [measured_loss(s, opts, ls) for s, opts, ls in zip(scores, allowed, losses)]
    while not st.met():
        best = None
        for i in st.movable(+1):
            gain = st.gain(st.delta(i, +1))
            if gain > 0:
                rate = (loss[i][st.pos[i] + 1] - loss[i][st.pos[i]]) / gain
                best = min(best or (rate, -gain, i), (rate, -gain, i))
        if best is None:
            break
        st.move(best[2], +1)
    while st.met():
        back = [(loss[i][st.pos[i]] - loss[i][st.pos[i] - 1], i) for i in st.movable(-1)
                if st.met(st.delta(i, -1))]
        if not back:
            break
        st.move(max(back)[1], -1)
    return _selection(graph, coupling, scores, st.kept(), flops, params)


class _Counts:
    """The kept count of every group (a position in its allowed counts) with the cost fractions
    it leaves, recounted locally: a group's step changes only the nodes around its tensors."""

    def __init__(self, graph: Graph, coupling: Coupling, allowed: list[list[int]], flops, params):
        self.graph, self.coupling, self.allowed = graph, coupling, allowed
        g_cls, self.per_class = unit_widths(coupling)
        self.n_units = np.array([g.n_units for g in coupling.groups], dtype=np.int64)
        self.base = cost_pass.count(graph)
        self.tensors = [{s.tensor for c, _ in cls for s in coupling.class_spaces[c]}
                        for cls in g_cls]
        self.nodes = [{n for t in ts for n in (*graph.tensors[t].consumers,
                                               graph.tensors[t].producer) if n is not None}
                      for ts in self.tensors]
        self.pos = [0] * len(allowed)
        self.total = np.ones(2)
        self.goal = np.array([1.0 if flops is None else flops, 1.0 if params is None else params])
        self.weight = np.array([flops is not None, params is not None], dtype=float)

    def kept(self, pos=None) -> np.ndarray:
        pos = self.pos if pos is None else pos
        return np.array([a[p] for a, p in zip(self.allowed, pos)], dtype=np.int64)

    def met(self, delta=None) -> bool:
        total = self.total if delta is None else self.total + delta
        return bool((total <= self.goal + 1e-12).all())

    def movable(self, way: int) -> list[int]:
        return [i for i, p in enumerate(self.pos) if 0 <= p + way < len(self.allowed[i])]

    def gain(self, delta) -> float:
        """The unmet targets' share of a step's saving (``-delta``)."""
        return float(self.weight @ np.where(self.total > self.goal, -delta, 0.0))

    def delta(self, i: int, way: int) -> np.ndarray:
        """The change of the (FLOPs, params) fractions when group ``i`` moves ``way`` steps."""
        pos = list(self.pos)
        pos[i] += way
        return self._local(i, self.kept(pos)) - self._local(i, self.kept())

    def move(self, i: int, way: int) -> None:
        self.total = self.total + self.delta(i, way)
        self.pos[i] += way

    def _local(self, i: int, kept: np.ndarray) -> np.ndarray:
        g, shape = self.graph, shape_fn(self.graph, self.coupling,
                                        self.per_class(self.n_units - kept))
        f = sum(cost_pass.node_cost(g, g.nodes[n], shape) for n in self.nodes[i])
        p = sum(cost_pass.param_count(g.tensors[t], shape) for t in self.tensors[i])
        return np.array([f / max(self.base.flops, 1), p / max(self.base.params, 1)])


def _selection(graph: Graph, coupling: Coupling, scores, kept: np.ndarray, flops,
               params) -> Selection:
    """The plan removing each group's lowest-scoring units down to ``kept``, counted."""
    remove = {g.key: lowest_units(s, g.n_units - k)
              for g, s, k in zip(coupling.groups, scores, kept) if k < g.n_units}
    plan = Plan(remove=remove, units={g.key: g.n_units for g in coupling.groups
                                      if g.key in remove}, meta={"backend": graph.backend})
    return counted(graph, coupling, plan, flops, params)


def counted(graph: Graph, coupling: Coupling, plan: Plan, flops: float | None = None,
            params: float | None = None) -> Selection:
    """``plan`` as a selection: its FLOPs and params counted, ``reached`` for the targets."""
    _, per_class = unit_widths(coupling)
    taken = np.array([len(plan.remove.get(g.key, ())) for g in coupling.groups], dtype=np.int64)
    base = cost_pass.count(graph)
    after = cost_pass.count(graph, shape_fn(graph, coupling, per_class(taken)))
    ok = (flops is None or after.flops <= flops * base.flops + 0.5) and \
        (params is None or after.params <= params * base.params + 0.5)
    return Selection(plan=plan, flops=after.flops, params=after.params, reached=ok,
                     candidates=int(taken.sum()))
