"""The select stage: unit scores of every channel group (idap, magnitude, taylor, random) and
the plan of what to remove -- for idap by the iterative schedule, re-scoring the masked, healed
model after every step; for ``latency=R`` by :mod:`idapgraph.stages.latency`."""

from __future__ import annotations

import math

import numpy as np

from ..analysis import Analysis
from ..errors import InputError
from ..ir.plan import Plan
from ..passes import divergence, scoring
from ..passes import heal as heal_pass
from ..passes import prune as prune_pass
from ..passes import select as select_pass
from . import heal as heal_stage
from .state import State


def run(s: State) -> None:
    """``s.plan`` for the FLOPs/params targets: the given plan or the selection (``s.reached``
    false, with a warning, where it falls short). A latency target is
    :func:`idapgraph.stages.latency.select`'s."""
    o, a = s.opts, s.a
    if o.latency is not None:
        return
    if o.plan is None:
        sel = select_plan(s)
        s.plan, s.reached = sel.plan, sel.reached
        if not sel.reached:
            s.warn(f"target not reachable: frozen channels and the per-group minimum "
                   f"({o.min_keep:.0%}) leave FLOPs at {sel.flops / max(a.cost.flops, 1):.3f} "
                   f"and params at {sel.params / max(a.cost.params, 1):.3f} of the original")
    else:
        s.plan = o.plan


def scoring_data(s: State):
    """Calibration batches for the method (None when it needs none); records their kind."""
    o = s.opts
    if o.method not in scoring.NEEDS_DATA:
        return None
    batches, real = s.a.model.calibration(o.calib, o.seed)
    s.kind = "data" if real else "random"
    if not real:
        s.warn(f"no calibration data: {o.method} scores use seeded standard-normal inputs and "
               "are weaker; pass calib= (API) or --calib FILE.npz (CLI)", stacklevel=4)
    return batches


def scores(a: Analysis, method: str, batches, loss, seed: int, current=None) -> list[np.ndarray]:
    """One-shot unit scores of every group by ``method`` (idap: on ``current``, default the
    original model)."""
    g, coupling = a.graph, a.coupling
    if method == "random":
        return scoring.random(coupling, seed)
    if method == "magnitude":
        return scoring.magnitude(g, coupling)
    if method == "taylor":
        if not hasattr(a.model, "taylor"):
            raise InputError("method 'taylor' needs gradients: pass a torch module, not ONNX")
        params_ = sorted({s.tensor for gr in coupling.groups for s in gr.params(g)})
        imp = a.model.taylor(a.model.source, params_, batches, loss)
        return scoring.taylor(g, coupling, imp)
    used, _ = divergence.requests(g, coupling)
    wanted = {(tp.tensor, tp.axis) for tp in used.values()}
    if current is None:  # the original: one run gives these statistics and its outputs
        current = a.model.source
        norms, _ = a.model.reference(batches, wanted)
    else:
        norms = heal_pass.ChannelStats(wanted)
        a.model.run(current, norms.tensors, batches, norms)
    out, _ = divergence.scores(g, coupling, used, norms,
                               lambda n, c=current: a.model.get_param(c, n))
    return out


def select_plan(s: State):
    """Scores + selection for the FLOPs/params targets. ``idap`` runs the iterative schedule
    with re-scoring; the others select in one shot. Returns the selection."""
    o, a = s.opts, s.a
    g, coupling = a.graph, a.coupling
    if (o.flops is None or o.flops >= 1) and (o.params is None or o.params >= 1):
        return select_pass.select(g, coupling, [np.zeros(gr.n_units) for gr in coupling.groups],
                                  flops=o.flops, params=o.params)  # identity: no scoring
    batches = scoring_data(s)
    if o.method != "idap":
        return select_pass.select(g, coupling, scores(a, o.method, batches, o.loss, o.seed),
                                  **_target(o))
    return _iterative(s, batches)


def _target(o) -> dict:
    return {"flops": o.flops, "params": o.params, "min_keep": o.min_keep, "round_to": o.round_to}


def _iterative(s: State, batches):
    """idap's schedule: step ``t`` removes ``p_t = base·(1 + t/T)^alpha`` of what remains,
    re-scored after every step on the masked model, healed so activations are realistic."""
    o, a = s.opts, s.a
    g, coupling = a.graph, a.coupling
    sel, plan = None, Plan(meta={"backend": g.backend})
    for t in range(10_000):
        rewrite = prune_pass.resolve(g, coupling, plan)
        current = None  # the original
        if plan.remove:
            current, _ = heal_stage.heal(a, a.model.emit(rewrite, "zero"), None, batches)
        sc = scores(a, o.method, batches, o.loss, o.seed, current)
        remaining = sum(gr.n_units - len(plan.remove.get(gr.key, ())) for gr in coupling.groups)
        frac = select_pass.schedule_fraction(t, base=o.base, steps=o.steps, alpha=o.alpha)
        sel = select_pass.select(g, coupling, sc, removed=plan,
                                 max_new=max(1, math.ceil(frac * remaining)), **_target(o))
        added = sel.plan.n_removed - plan.n_removed
        plan = sel.plan
        s.log.append({"step": t, "fraction": round(frac, 4), "removed": added,
                      "flops": sel.flops, "params": sel.params})
        if o.progress is not None:
            o.progress("step", t + 1, None)
        if sel.reached or added == 0:
            break
    return sel
