"""Global selection: rank every removable unit by score and remove the lowest-ranked ones until
the FLOPs / parameter target is met (in one shot, or one step of an iterative schedule)."""

from __future__ import annotations

import math
from collections.abc import Sequence
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


#: The default channel quantum: a pruned group keeps a multiple of this many channels
#: (onnxruntime's CPU convolutions run blocked, NCHWc, only on such counts: EfficientNet-Lite0
#: at 0.7 of the FLOPs ran 2.0x the original's time with exact counts, 0.58x with multiples of
#: 8; BENCHMARKS.md "Kernel-friendly channel counts").
KERNEL_CHANNELS = 8


def unit_quanta(coupling: Coupling, round_to: int | None = None) -> np.ndarray:
    """Per group, the multiple of units a pruned group keeps: ``round_to`` for every group, or
    (``None``, the default) the fewest units spanning a multiple of :data:`KERNEL_CHANNELS`
    channels in every member (8 units of one channel, 1 attention head of 32); a group no wider
    than that quantum keeps any count."""
    if round_to is not None:
        return np.full(len(coupling.groups), round_to, dtype=np.int64)
    out = []
    for g in coupling.groups:
        q = 1
        for m in g.members:
            w = int(m.index.shape[1])
            q = math.lcm(q, KERNEL_CHANNELS // math.gcd(KERNEL_CHANNELS, max(w, 1)))
        out.append(1 if g.n_units <= q else q)
    return np.asarray(out, dtype=np.int64)


def min_kept(n: int, min_keep: float = 0.1, round_to: int = 1) -> int:
    """The fewest units a group of ``n`` may keep: ``max(1, ceil(min_keep·n))`` rounded up to a
    multiple of ``round_to``, never below ``round_to`` and never more than ``n``."""
    return min(n, rounded_keep(max(1, math.ceil(min_keep * n)), round_to))


def rounded_keep(kept: int, round_to: int) -> int:
    """``kept`` rounded up to a multiple of ``round_to`` (at least ``round_to``)."""
    return max(round_to, -(-kept // round_to) * round_to)


#: How far below the target (a fraction of the original's FLOPs/params) a selection may land
#: before the step that got it there is skipped for finer ones: a group rounded to whole
#: multiples of 8 channels (a 16-channel residual stream of ResNet-56, coupled through every
#: block of its stage) removes 8 at once, and magnitude scores at 0.7 FLOPs landed at 0.474.
OVERSHOOT = 0.02


def select(graph: Graph, coupling: Coupling, scores: list[np.ndarray], *,
           flops: float | None = None, params: float | None = None, min_keep: float = 0.1,
           removed: Plan | None = None, max_new: int | None = None,
           round_to: int | None | Sequence[int] = 1) -> Selection:
    """Remove the lowest-scoring units (global ranking) until ``flops``/``params`` (fractions of
    the original to keep) are met, on top of the units ``removed`` already, adding at most
    ``max_new``. Every group keeps at least :func:`min_kept` units, and a pruned group keeps a
    multiple of ``round_to`` (a group of at most ``round_to`` units is left whole; ``None``: of
    :func:`unit_quanta`'s kernel-friendly counts; a sequence: one multiple per group);
    ``max_new`` then counts units actually removed, and a step that would remove none takes the
    smallest whole rounding step instead. Where the unit that meets the target takes its group
    a whole rounding step further and lands more than :data:`OVERSHOOT` below it, that group
    keeps what it had and the search goes on with the other groups' units (while they still
    reach the target)."""
    round_to = quanta(coupling, round_to)
    base = cost_pass.count(graph)
    prev = {k: set(v) for k, v in (removed.remove if removed else {}).items()}
    g_cls, per_class = unit_widths(coupling)
    base_removed, cg, cu = _candidates(coupling, scores, prev, g_cls, min_keep, round_to)
    n_units = np.array([g.n_units for g in coupling.groups], dtype=np.int64)
    n_prev = np.array([len(prev.get(g.key, ())) for g in coupling.groups], dtype=np.int64)

    def taken(k: int) -> np.ndarray:
        return _taken(cg[:k], n_units, n_prev, round_to)

    counter = cost_pass.Recounter(graph, base)
    last = np.zeros_like(base_removed)  # what the counter's shapes remove: nothing yet

    def cost_at(k: int):
        nonlocal last
        rem = base_removed + per_class(taken(k))
        changed = {s.tensor for c in np.flatnonzero(rem != last).tolist()
                   for s in coupling.class_spaces[c]}
        last = rem
        return counter.update(changed, shape_fn(graph, coupling, rem))

    def excess(f: int, p: int) -> float:
        """How far (f, p) is above the target, in fractions of the original: <= 0 meets it."""
        over = [(f - flops * base.flops - 0.5) / max(base.flops, 1)] if flops is not None else []
        if params is not None:
            over.append((p - params * base.params - 0.5) / max(base.params, 1))
        return max(over, default=0.0)

    def ok(f: int, p: int) -> bool:
        return excess(f, p) <= 0

    def shortest() -> int:
        hi = len(cg) if max_new is None else _prefix_for(lambda k: int(taken(k).sum()),
                                                         len(cg), max_new)
        return _first_meeting(lambda k: excess(*cost_at(k)), hi)

    hi = shortest()
    best = (excess(*cost_at(hi)), cg, cu, hi)
    while hi > 0 and best[0] < -OVERSHOOT:  # a coarse step overshot the target: try without
        later = (np.arange(len(cg)) >= hi - 1) & (cg == cg[hi - 1])  # that group's further units
        cg, cu = cg[~later], cu[~later]
        hi = shortest()
        e = excess(*cost_at(hi))
        if e > 0:  # the target is out of reach without them
            break
        best = max(best, (e, cg, cu, hi), key=lambda b: b[0])
    _, cg, cu, hi = best
    f_k, p_k = cost_at(hi)
    plan = _plan(graph, coupling, prev, cg[:hi], cu[:hi], taken(hi), removed)
    return Selection(plan=plan, flops=f_k, params=p_k, reached=ok(f_k, p_k), candidates=len(cg))


def _candidates(coupling: Coupling, scores: list[np.ndarray], prev: dict[str, set],
                g_cls: list[list[tuple[int, int]]], min_keep: float,
                round_to: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices removed per space class by ``prev``, group and unit of every removable candidate
    in global order: lowest score first, ties by group then unit)."""
    base_removed = np.zeros(len(coupling.class_size), dtype=np.int64)
    cand_score, cand_group, cand_unit = [], [], []
    for gi, (g, s) in enumerate(zip(coupling.groups, scores)):
        already = prev.get(g.key, set())
        for c, n in g_cls[gi]:
            base_removed[c] += n * len(already)
        room = g.n_units - min_kept(g.n_units, min_keep, int(round_to[gi])) - len(already)
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
    return base_removed, cg[order], cu[order]


def quanta(coupling: Coupling, round_to) -> np.ndarray:
    """``round_to`` as one multiple per group (see :func:`select`), checked."""
    if round_to is None or isinstance(round_to, (int, np.integer)):
        if round_to is not None and not round_to >= 1:
            raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
        return unit_quanta(coupling, None if round_to is None else int(round_to))
    q = np.asarray(round_to, dtype=np.int64)
    if q.shape != (len(coupling.groups),) or (q < 1).any():
        raise ValueError(f"round_to needs one integer >= 1 per group, got {round_to!r}")
    return q


def _taken(groups: np.ndarray, n_units: np.ndarray, n_prev: np.ndarray,
           round_to: np.ndarray) -> np.ndarray:
    """Units each group loses when the candidates of ``groups`` (their groups) are chosen, after
    rounding what it keeps up to a multiple of its ``round_to``."""
    picked = np.bincount(groups.astype(np.int64), minlength=len(n_units))[:len(n_units)]
    if (round_to == 1).all():
        return picked
    kept = n_units - n_prev - picked
    kept = np.where(picked > 0, np.minimum(n_units - n_prev,
                                           np.maximum(round_to, -(-kept // round_to) * round_to)),
                    n_units - n_prev)
    return n_units - n_prev - kept


def lowest_units(scores, k: int) -> list[int]:
    """The ``k`` lowest-scoring units of a group (ties by index), sorted: what a cut of ``k``
    removes."""
    return sorted(int(u) for u in np.argsort(scores, kind="stable")[:max(k, 0)])


def unit_widths(coupling: Coupling):
    """(per group: its members' (space class, indices per unit); ``units taken per group ->
    indices removed per space class``)."""
    g_cls = [[(coupling.space_class[m.spaces[0]], m.index.shape[1]) for m in g.members]
             for g in coupling.groups]
    return g_cls, _class_widths(g_cls, len(coupling.class_size))


def _class_widths(g_cls: list[list[tuple[int, int]]], n_classes: int):
    """``taken -> indices removed per space class`` when each group ``gi`` takes ``taken[gi]``
    units, a unit spanning ``n`` indices of each class ``c`` in ``g_cls[gi]``."""
    gi = np.array([i for i, cls in enumerate(g_cls) for _ in cls], dtype=np.int64)
    ci = np.array([c for cls in g_cls for c, _ in cls], dtype=np.int64)
    width = np.array([n for cls in g_cls for _, n in cls], dtype=np.int64)

    def per_class(taken: np.ndarray) -> np.ndarray:
        rem = np.zeros(n_classes, dtype=np.int64)
        np.add.at(rem, ci, width * np.asarray(taken, dtype=np.int64)[gi])
        return rem

    return per_class


def _first_meeting(excess_at, hi: int) -> int:
    """The shortest prefix up to ``hi`` candidates meeting the target (``excess_at(k) <= 0``;
    the excess falls as ``k`` grows): 0 when the start meets it, ``hi`` when even ``hi`` does
    not. The search guesses by linear interpolation of the excess (its first probes are the
    costly ones: each recounts every node whose width changed) and bisects every other step,
    so it never takes more than about twice bisection's probes."""
    e_lo = excess_at(0)
    if e_lo <= 0:
        return 0
    e_hi = excess_at(hi)
    if e_hi > 0:
        return hi
    lo, interpolate = 0, True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if interpolate and e_lo > e_hi:
            guess = lo + int(e_lo / (e_lo - e_hi) * (hi - lo))
            mid = min(max(guess, lo + 1), hi - 1)
        width = hi - lo
        e = excess_at(mid)
        if e <= 0:
            hi, e_hi = mid, e
        else:
            lo, e_lo = mid, e
        interpolate = not interpolate or (hi - lo) * 2 <= width  # bisect after a poor guess
    return hi


def _plan(graph: Graph, coupling: Coupling, prev: dict[str, set], groups: np.ndarray,
          units: np.ndarray, left: np.ndarray, removed: Plan | None) -> Plan:
    """The plan removing ``prev`` plus, per group, its first ``left`` chosen candidates
    (``groups``/``units``, lowest score first)."""
    remove = {k: set(v) for k, v in prev.items()}
    for gi, u in zip(groups, units):  # a group's candidates come lowest score first
        if left[gi] > 0:
            remove.setdefault(coupling.groups[gi].key, set()).add(int(u))
            left[gi] -= 1
    return Plan(remove={k: sorted(v) for k, v in remove.items() if v},
                units={g.key: g.n_units for g in coupling.groups if remove.get(g.key)},
                meta=dict(removed.meta) if removed else {"backend": graph.backend})


def _prefix_for(removed_at, n: int, max_new: int) -> int:
    """The longest candidate prefix removing at most ``max_new`` units (``removed_at`` grows with
    the prefix), or, when even one unit is more than rounding allows, the shortest removing any."""
    if removed_at(n) <= max_new:
        return n
    lo, hi = 0, n
    while lo < hi:  # largest k with removed_at(k) <= max_new
        mid = (lo + hi + 1) // 2
        if removed_at(mid) <= max_new:
            lo = mid
        else:
            hi = mid - 1
    if removed_at(lo) > 0:
        return lo
    hi = n
    while lo < hi:  # smallest k with removed_at(k) > 0
        mid = (lo + hi) // 2
        if removed_at(mid) > 0:
            hi = mid
        else:
            lo = mid + 1
    return lo
