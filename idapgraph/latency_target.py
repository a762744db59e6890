"""``latency=R``: choose channel counts and blocks for a measured latency budget.

1. The latency model (:mod:`idapgraph.passes.latency`): layer look-up tables, cached on disk
   and timed where missing, fitted to the measured latency of the unpruned model.
2. The MILP (:mod:`idapgraph.passes.latency_select`) keeps the most importance within
   ``R ×`` that latency.
3. Closed loop: the chosen model is built and timed in turns with the original (so a change of
   machine load cancels out of their ratio); while it misses the target by more than
   ``tol``, the model is refitted to every measurement so far
   (:meth:`~idapgraph.passes.latency.LatencyModel.refit`) and the MILP solved again, from the
   second correction on with the budget also rescaled by target / measured (at most ``rounds``
   solves). The winner is the round measured closest to the target among those within it
   (``MISS`` over it at most, what the report still counts as reached) -- a model faster than
   asked is a good answer when nothing more fits -- or, when none is, the fastest. Every
   round is recorded with its prediction.
4. Bypassed blocks together: with ``bypass_error``, a plan bypassing several blocks has their
   joint calibration output error measured (blocks bypassed, channels whole); above
   ``max_error`` the bound on their summed single errors is tightened by the overshoot and the
   MILP solved again, before any timing (errors of several bypasses do not simply add up).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .ir.plan import Plan
from .passes import latency as lat
from .passes import latency_select
from .passes import select as select_pass
from .runners import clock, solver_output
from .runners.latency_cache import DiskTable
from .runners.providers import CPU


def table_for(threads: int, path=None, provider: str = CPU) -> DiskTable:
    """The latency table of this machine, ``threads`` and ``provider`` (a full onnxruntime
    name: :func:`idapgraph.runners.providers.resolve`), read from the cache on disk."""
    return DiskTable(clock.current().machine(threads, provider), path)


def grid(round_to: int | None) -> dict:
    """The option grid's channel steps for a ``round_to`` (see :func:`lat.group_options`;
    ``None``, the kernel-friendly default, is the grid's own 8-channel quantum)."""
    r = round_to or 1
    return {"quantum": max(8, r), "finest": max(4, r)}


def latency_model(a, blocks, table: DiskTable, *, min_keep: float, quantum: int,
                  finest: int = 4, progress=None, refresh: bool = False,
                  gate_groupless: bool = False) -> tuple[lat.LatencyModel, dict]:
    """The latency model of analysis ``a`` and how its table was obtained."""
    t0 = time.perf_counter()
    tick = (lambda d, n: progress("profile", d, n)) if progress is not None else None
    clk, threads, provider = clock.current(), table.machine["threads"], table.machine["provider"]
    model = lat.build(a.graph, a.coupling, blocks, table, min_keep=min_keep, quantum=quantum,
                      finest=finest,
                      timer=lambda sig, cin, cout: clk.layer(sig, cin, cout, threads=threads,
                                                             provider=provider),
                      progress=tick, refresh=refresh, gate_groupless=gate_groupless)
    if model.timed:
        table.save()
    return model, {"path": str(table.path), "entries": len(table), "needed": model.needed,
                   "timed": model.timed, "reused": model.needed - model.timed,
                   "seconds": round(time.perf_counter() - t0, 3)}


def measure(model_proto, threads: int, runs: int = 20, provider: str = CPU) -> float:
    """Milliseconds of one call of ``model_proto`` on the clock in use."""
    return clock.current().model(model_proto, threads=threads, provider=provider, runs=runs)


# a latency target counts as reached up to this fraction over it (the report's ``reached``)
MISS = 0.10


def ratio(reference, candidate, threads: int, runs: int = 20,
          provider: str = CPU) -> tuple[float, float]:
    """(reference ms, candidate ms), timed in turns: their ratio survives a change of load."""
    return clock.current().pair(reference, candidate, threads=threads, provider=provider,
                                runs=runs)


def _better(new: float, old: float, goal_ms: float, limit_ms: float) -> bool:
    """Whether a round measured at ``new`` ms beats one at ``old`` for a ``goal_ms`` target
    allowed up to ``limit_ms``: within the limit beats over it; both within, the closer to the
    goal; both over, the faster."""
    if (new <= limit_ms) != (old <= limit_ms):
        return new <= limit_ms
    if new <= limit_ms:
        return abs(new / goal_ms - 1) < abs(old / goal_ms - 1)
    return new < old


def plan_of(a, model: lat.LatencyModel, scores: list[np.ndarray],
            sol: latency_select.Solution) -> Plan:
    """Each group keeps its chosen count of highest-scoring units; shut gates are bypasses
    (only the outermost of nested ones)."""
    remove = {}
    for g, s, c in zip(a.coupling.groups, scores, model.counts(sol.choice)):
        if c < g.n_units:
            remove[g.key] = select_pass.lowest_units(s, g.n_units - c)
    kept = set(sol.kept_blocks)
    shut = [b for bi, b in enumerate(model.blocks) if bi not in kept]
    outer = [b for b in shut if not any(o is not b and set(b.nodes) < set(o.nodes) for o in shut)]
    return Plan(remove=remove, units={g.key: g.n_units for g in a.coupling.groups
                                      if g.key in remove},
                meta={"backend": a.graph.backend}, bypass=[b.key for b in outer])


def select(a, scores: list[np.ndarray], *, target: float, threads: int, blocks: list,
           realize: Callable[[Plan], Any], original=None, min_keep: float = 0.1,
           quantum: int = 8,
           finest: int = 4,
           solver: str = "milp", rounds: int = 4, tol: float = 0.05, progress=None,
           table: DiskTable | None = None, provider: str = CPU,
           block_weights: dict[str, float] | None = None,
           group_losses: list[dict[int, float]] | None = None,
           block_errors: dict[str, float] | None = None,
           bypass_error: Callable[[list[str]], float] | None = None,
           max_error: float | None = None) -> tuple[Plan, dict]:
    """The plan for ``target`` × the measured latency; ``realize(plan)`` builds the pruned
    model as an ONNX ModelProto for timing, timed against ``original`` (default: ``a``'s
    model). ``block_weights``: block key -> importance of
    keeping it (see :class:`~idapgraph.passes.latency.LatencyModel`). ``group_losses`` (per
    group: kept count -> measured error): the groups' importance on that scale
    (:func:`lat.measured_importance`). ``block_errors`` (each
    block's error bypassed alone), ``bypass_error`` (the joint error of bypassing the given
    blocks) and ``max_error``: the bypassed blocks' joint error stays within ``max_error``.
    Everything is timed on ``provider`` (the table's own when ``table`` is given).

    Counts are multiples of ``quantum`` channels first; only while that grid's fastest plan is
    predicted within ``tol`` of the budget or above it are narrow groups also offered halvings
    down to ``finest`` channels (:func:`lat.group_options`), every timing so far refitted."""
    table = table or table_for(threads, provider=provider)
    search = _Search(a, scores, blocks, table, threads=threads, min_keep=min_keep,
                     quantum=quantum, finest=finest, solver=solver, progress=progress,
                     block_weights=block_weights, group_losses=group_losses,
                     block_errors=block_errors, bypass_error=bypass_error, max_error=max_error)
    if original is None:
        original = a.model.as_onnx(a.model.source)
    return search.run(target, original, realize, rounds=rounds, tol=tol)


class _Search:
    """The closed loop of :func:`select`: the latency model (refitted to every measurement),
    the MILP, and the joint bypass errors measured so far."""

    def __init__(self, a, scores, blocks, table: DiskTable, *, threads: int, min_keep: float,
                 quantum: int, finest: int, solver: str, progress, block_weights, group_losses,
                 block_errors, bypass_error, max_error) -> None:
        self.a, self.scores, self.blocks, self.table = a, scores, blocks, table
        self.threads, self.provider = threads, table.machine["provider"]
        self.min_keep, self.quantum, self.finest = min_keep, quantum, finest
        self.solver, self.progress = solver, progress
        self.block_weights, self.group_losses = block_weights, group_losses
        self.block_errors, self.bypass_error, self.max_error = block_errors, bypass_error, max_error
        self.checked = bypass_error is not None and max_error is not None \
            and block_errors is not None
        self.measured: list[tuple[list[int], list[int], float]] = []  # (counts, kept, ms)
        self.joint: dict[tuple, float] = {}
        self.base = 0.0

    def prepare(self, step: int, cap: float | None):
        """The latency model whose narrow groups go down to ``step`` channels, with the error
        cap ``cap``, fitted to every measurement so far; (model, table info, importance per
        option)."""
        m, info_ = latency_model(self.a, self.blocks, self.table, min_keep=self.min_keep,
                                 quantum=self.quantum, finest=step, progress=self.progress,
                                 gate_groupless=self.block_weights is not None)
        if self.block_weights is not None:
            m.block_weight = [float(self.block_weights[b.key]) for b in m.blocks]
        if self.checked:
            # floored, so that a zero cap admits no bypass at all
            m.block_error = [max(float(self.block_errors[b.key]), 1e-12) for b in m.blocks]
            m.error_cap = cap
        m.calibrate(self.base)
        for counts, kept, ms in self.measured:
            m.refit([o.index(c) for o, c in zip(m.options, counts)], kept, ms)
        return m, info_, lat.importance(self.scores, m.options, losses=self.group_losses)

    def solve(self, model, imp, budget_ms: float):
        """The MILP's plan, re-solved with a tighter cap while its bypasses together exceed
        ``max_error``; (solution, plan, their joint error or None)."""
        for attempt in range(12):
            with solver_output.filtered():
                sol = latency_select.solve(model, imp, budget_ms, method=self.solver)
            plan = plan_of(self.a, model, self.scores, sol)
            if not self.checked or len(plan.bypass) < 2:
                return sol, plan, None
            key = tuple(sorted(plan.bypass))
            if key not in self.joint:
                self.joint[key] = float(self.bypass_error(list(key)))
            err = self.joint[key]
            if err <= self.max_error:
                return sol, plan, err
            summed = sum(model.block_error[i] for i, b in enumerate(model.blocks)
                         if b.key in key)
            # after 10 tightenings: no bypass at all
            model.error_cap = 0.0 if attempt >= 10 else \
                min(model.error_cap, summed) * 0.9 * self.max_error / err
        raise AssertionError("unreachable: a zero error cap admits no bypass")

    def run(self, target: float, original, realize, *, rounds: int, tol: float):
        """Up to ``rounds`` solves, each timed; the best plan and the record."""
        self.base = base = measure(original, self.threads, provider=self.provider)
        used = max(self.finest, self.quantum)
        model, tinfo, imp = self.prepare(used, float(self.max_error) if self.checked else None)
        goal = target * base
        budget, log, best = goal, [], None
        for r in range(rounds):
            if used > self.finest and latency_select.fastest(model) > (1 - tol) * budget:
                model, fine_info, imp = self.prepare(self.finest, model.error_cap)
                used = self.finest
                tinfo = {k: v + fine_info[k] if k in ("timed", "seconds") else fine_info[k]
                         for k, v in tinfo.items()}
            sol, plan, err = self.solve(model, imp, budget)
            ref, cand = ratio(original, realize(plan), self.threads, provider=self.provider)
            got = base * cand / ref  # on the scale of the first measurement of the original
            log.append(_round_record(r, budget, sol, got, ref, plan, err))
            if best is None or _better(got, best[2], goal, goal * (1 + MISS)):
                best = (plan, sol, got)
            if self.progress is not None:
                self.progress("latency", r + 1, None)
            if abs(got / goal - 1) <= tol:
                break
            model.refit(sol.choice, sol.kept_blocks, got)
            self.measured.append((model.counts(sol.choice), list(sol.kept_blocks), got))
            budget = goal if r == 0 else budget * goal / got
        plan, sol, got = best
        info = {"target": target, "threads": self.threads, "provider": self.provider,
                "before_ms": round(base, 4), "goal_ms": round(goal, 4),
                "predicted_ms": round(sol.predicted_ms, 4), "selected_ms": round(got, 4),
                "model_error": round(sol.predicted_ms / got - 1, 4),
                "solver": sol.solver, "notes": sol.notes, "rounds": log, "table": tinfo,
                "quantum": self.quantum, "finest": used, "gated_blocks": len(model.blocks),
                "error_cap": None if model.error_cap is None else round(model.error_cap, 6)}
        return plan, info


def _round_record(r: int, budget: float, sol, got: float, ref: float, plan: Plan, err) -> dict:
    return {"round": r, "budget_ms": round(budget, 4), "predicted_ms": round(sol.predicted_ms, 4),
            "measured_ms": round(got, 4), "reference_ms": round(ref, 4),
            "solver": sol.solver, "status": sol.status,
            "solve_s": round(sol.seconds, 3), "feasible": sol.feasible,
            "blocks_bypassed": list(plan.bypass),
            "bypass_error": None if err is None else round(err, 6)}
