"""Global selection: rank every removable unit by score and remove the lowest-ranked ones until
the FLOPs / parameter target is met (in one shot, or one step of an iterative schedule)."""

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
    reached: bool  # the returned plan meets the target
    candidates: int  # units that could still be removed before this step


def schedule_fraction(step: int, *, base: float, steps: int, alpha: float) -> float:
    """IDAP++ step size: the fraction of the remaining units removed at step ``step``."""
    return min(1.0, base * (1 + step / steps) ** alpha)


def select(graph: Graph, coupling: Coupling, scores: list[np.ndarray], *,
           flops: float | None = None, params: float | None = None, min_keep: float = 0.1,
           removed: Plan | None = None, max_new: int | None = None) -> Selection:
    """Remove the lowest-scoring units (global ranking) until ``flops``/``params`` (fractions of
    the original to keep) are met, on top of the units ``removed`` already, adding at most
    ``max_new``. Every group keeps at least ``max(1, ceil(min_keep·n))`` units."""
    base = cost_pass.count(graph)
    n_cls = len(coupling.class_size)
    prev = {k: set(v) for k, v in (removed.remove if removed else {}).items()}
    g_cls = [[(coupling.space_class[m.spaces[0]], m.index.shape[1]) for m in g.members]
             for g in coupling.groups]
    base_removed = np.zeros(n_cls, dtype=np.int64)
    cand_score, cand_group, cand_unit = [], [], []
    for gi, (g, s) in enumerate(zip(coupling.groups, scores)):
        already = prev.get(g.key, set())
        for c, n in g_cls[gi]:
            base_removed[c] += n * len(already)
        room = g.n_units - max(1, math.ceil(min_keep * g.n_units)) - len(already)
        order = [u for u in np.argsort(s, kind="stable") if int(u) not in already][:max(room, 0)]
        order = np.asarray(order, dtype=np.int64)
        cand_score.append(s[order])
        cand_group.append(np.full(len(order), gi))
        cand_unit.append(order)
    if cand_score:
        cs, cg, cu = (np.concatenate(cand_score), np.concatenate(cand_group),
                      np.concatenate(cand_unit))
    else:
        cs = cg = cu = np.zeros(0, dtype=np.int64)
    order = np.lexsort((cu, cg, cs))
    cg, cu = cg[order], cu[order]

    def cost_at(k: int):
        rem = base_removed.copy()
        for gi in cg[:k]:
            for c, n in g_cls[gi]:
                rem[c] += n
        c = cost_pass.count(graph, shape_fn(graph, coupling, rem))
        return c.flops, c.params

    def ok(f: int, p: int) -> bool:
        return ((flops is None or f <= flops * base.flops + 0.5)
                and (params is None or p <= params * base.params + 0.5))

    hi = len(cg) if max_new is None else min(len(cg), max_new)
    lo = 0
    if ok(*cost_at(0)):
        hi = 0
    elif ok(*cost_at(hi)):
        while lo < hi:  # smallest k meeting the target (cost falls as k grows)
            mid = (lo + hi) // 2
            if ok(*cost_at(mid)):
                hi = mid
            else:
                lo = mid + 1
    f_k, p_k = cost_at(hi)
    remove = {k: set(v) for k, v in prev.items()}
    for gi, u in zip(cg[:hi], cu[:hi]):
        remove.setdefault(coupling.groups[gi].key, set()).add(int(u))
    plan = Plan(remove={k: sorted(v) for k, v in remove.items() if v},
                units={g.key: g.n_units for g in coupling.groups if remove.get(g.key)},
                meta=dict(removed.meta) if removed else {"backend": graph.backend})
    return Selection(plan=plan, flops=f_k, params=p_k, reached=ok(f_k, p_k), candidates=len(cg))
