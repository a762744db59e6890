"""Global selection: rank every removable unit by score and remove the lowest-ranked ones until
the FLOPs / parameter target is met."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import Graph
from ..ir.plan import Plan
from . import cost as cost_pass
from .prune import shape_fn


@dataclass
class Selection:
    plan: Plan
    flops: int
    params: int
    reached: bool
    candidates: int


def select(graph: Graph, coupling: Coupling, scores: list[np.ndarray], *,
           flops: float | None = None, params: float | None = None,
           min_keep: float = 0.1) -> Selection:
    """Remove the lowest-scoring units (global ranking) until ``flops``/``params`` (fractions of
    the original to keep) are met. Every group keeps at least ``max(1, ceil(min_keep·n))`` units."""
    base = cost_pass.count(graph)
    n_cls = len(coupling.class_size)
    cand_score, cand_group, cand_unit = [], [], []
    for gi, (g, s) in enumerate(zip(coupling.groups, scores)):
        protect = max(1, math.ceil(min_keep * g.n_units))
        order = np.argsort(-s, kind="stable")
        rest = order[protect:]
        cand_score.append(s[rest])
        cand_group.append(np.full(len(rest), gi))
        cand_unit.append(rest)
    if cand_score:
        cs, cg, cu = (np.concatenate(cand_score), np.concatenate(cand_group),
                      np.concatenate(cand_unit))
    else:
        cs = cg = cu = np.zeros(0, dtype=np.int64)
    order = np.lexsort((cu, cg, cs))
    cg, cu = cg[order], cu[order]
    # classes and per-unit index counts of every group
    g_cls = [[(coupling.space_class[m.spaces[0]], m.index.shape[1]) for m in g.members]
             for g in coupling.groups]

    def cost_at(k: int):
        removed = np.zeros(n_cls, dtype=np.int64)
        for gi in cg[:k]:
            for c, n in g_cls[gi]:
                removed[c] += n
        c = cost_pass.count(graph, shape_fn(graph, coupling, removed))
        return c.flops, c.params

    def ok(f: int, p: int) -> bool:
        return ((flops is None or f <= flops * base.flops + 0.5)
                and (params is None or p <= params * base.params + 0.5))

    lo, hi = 0, len(cg)
    f_hi, p_hi = cost_at(hi)
    reached = ok(f_hi, p_hi)
    if ok(base.flops, base.params):
        hi = 0
    elif reached:
        while lo < hi:  # smallest k meeting the target (cost falls as k grows)
            mid = (lo + hi) // 2
            if ok(*cost_at(mid)):
                hi = mid
            else:
                lo = mid + 1
    f_k, p_k = cost_at(hi)
    remove: dict[str, list[int]] = {}
    for gi, u in zip(cg[:hi], cu[:hi]):
        remove.setdefault(coupling.groups[gi].key, []).append(int(u))
    plan = Plan(remove={k: sorted(v) for k, v in remove.items()},
                units={g.key: g.n_units for g in coupling.groups if g.key in remove},
                meta={"backend": graph.backend})
    return Selection(plan=plan, flops=f_k, params=p_k, reached=reached, candidates=len(cg))
