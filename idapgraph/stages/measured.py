"""``measure_groups`` with FLOPs/params targets: the channel counts allocated by measured group
losses (:func:`idapgraph.passes.allocate.allocate`), in rounds. Each round measures the model
as the rounds before left it (pruned and healed, analysed again), so a group's loss sees the
cuts already made: measured once, the losses of cuts made together are only added, and at
deep targets the cuts compound (CIFAR ResNet-20 at 0.5 FLOPs: 54.1 % top-1 in one round, 69.0 %
in two; BENCHMARKS.md). The plan is composed on the original model, which the later stages
emit and heal as usual."""

from __future__ import annotations

import math


from ..analysis import Analysis, analyze
from ..ir.plan import Plan
from ..passes import allocate as allocate_pass
from ..passes import prune as prune_pass
from ..passes import select as select_pass
from . import heal as heal_stage
from . import obs as obs_stage
from . import select as select_stage
from .losses import LOSS_KEEPS, group_losses
from .state import State

#: Each round keeps at least this share of the FLOPs (and params) it starts from: a target of
#: 0.7 is one round, 0.5 two, 0.3 four.
ROUND_KEEP = 0.7


#: The default (``measure_groups=None``) measures only where the probes' model runs come to at
#: most this many FLOPs (:func:`probe_flops`; on a 2-core CPU the probes ran about 90 GFLOP/s,
#: so this is about six minutes). SmolLM2-135M at 0.8 params (150 probes of 8 128-token
#: windows: 21 TFLOPs) measures: calibrated on 64 held-out WikiText-2 windows the measured
#: counts gave perplexity 39.7 in 499 s against 43.5 in 260 s from the scores alone (4,096
#: tokens; BENCHMARKS.md), and better on all three calibration sets tried; CIFAR ResNet-56
#: (0.2-0.9 TFLOPs at 0.7-0.3 FLOPs), EfficientNet-Lite0 (1.8-7.0) and MiniLM (0.5 at 0.7)
#: measure too.
MEASURE_FLOPS = 3e13


def probe_flops(a: Analysis, o) -> float:
    """The FLOPs the measured allocation's probes would run for options ``o``: rounds × probes
    a round (on the original's groups) × the probe batches' samples × a sample's FLOPs."""
    batches, _ = a.model.calibration(o.calib, o.seed)
    probe = select_stage.probe_batches(a, batches)
    samples = sum(len(b[0]) for b in probe)
    quanta = select_pass.unit_quanta(a.coupling, o.round_to)
    probes = sum(len(allocate_pass.probe_counts(g.n_units, int(q), o.min_keep, LOSS_KEEPS))
                 for g, q in zip(a.coupling.groups, quanta))
    return float(rounds(o) * probes * samples * select_stage.sample_flops(a, probe))


def run(s: State) -> None:
    """The select stage of ``measure_groups`` with FLOPs/params targets (``s.plan``)."""
    o = s.opts
    if o.measure_groups and o.latency is None and o.plan is None:
        whole = all(t is None or t >= 1 for t in (o.flops, o.params))  # nothing to measure
        select_stage.settle(s, select_stage.select_plan(s) if whole else select(s))


def rounds(o) -> int:
    """Rounds for the targets: each keeps at least :data:`ROUND_KEEP` of what it starts from
    (a latency target alone: one)."""
    low = min((t for t in (o.flops, o.params) if t is not None), default=1.0)
    return max(1, math.ceil(math.log(low) / math.log(ROUND_KEEP) - 1e-9)) if low < 1 else 1


def select(s: State) -> select_pass.Selection:
    """The rounds: round ``k`` of ``R`` allocates toward ``target^(k/R)`` on the model the
    rounds before left (its own analysis, scores and measured losses), and its cuts are mapped
    back onto the original's units. Records each round's losses (``s.group_losses``) and
    totals (``s.log``). Returns the selection on the original."""
    o, a = s.opts, s.a
    batches, real = a.model.calibration(o.calib, o.seed)
    s.kind = "data" if real else "random"
    if not real:
        s.warn("no calibration data: measure_groups measures the groups' losses on seeded "
               "standard-normal inputs; pass calib= (API) or --calib FILE.npz (CLI)", stacklevel=5)
    plan, n = Plan(meta={"backend": a.graph.backend}), rounds(o)
    sel = allocate_pass.counted(a.graph, a.coupling, plan, o.flops, o.params)
    s.group_losses = []
    for k in range(1, n + 1):
        now, cal = (a, batches) if not plan.remove else _pruned(s, plan, batches)
        share = {"flops": _share(o.flops, k, n, sel.flops, a.cost.flops),
                 "params": _share(o.params, k, n, sel.params, a.cost.params)}
        step = _round(s, now, cal, plan, share)
        plan = composed(a, plan, step.plan)
        sel = allocate_pass.counted(a.graph, a.coupling, plan, o.flops, o.params)
        s.log.append({"step": k - 1, "fraction": round(share["flops"] or share["params"], 4),
                      "removed": step.plan.n_removed, "flops": sel.flops, "params": sel.params})
        if o.progress is not None:
            o.progress("round", k, n)
    return sel


def _share(target, k: int, n: int, now: int, base: int):
    """Round ``k``'s goal as a fraction of the model it starts from (None: no such target)."""
    return None if target is None else min(1.0, target ** (k / n) * base / max(now, 1))


def _pruned(s: State, plan: Plan, batches) -> tuple[Analysis, list]:
    """The original with ``plan`` removed and healed by least squares, analysed, and the
    calibration batches of that analysis."""
    a, o = s.a, s.opts
    rewrite = prune_pass.resolve(a.graph, a.coupling, plan)
    model, _ = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches, mode="lsq")
    now = analyze(model, getattr(a.model, "example_inputs", None))
    return now, now.model.calibration(o.calib, o.seed)[0]


def _round(s: State, now: Analysis, cal, plan: Plan, share: dict) -> select_pass.Selection:
    """One round's selection on ``now`` (the model ``plan`` left): scores (with
    ``order="obs"``/``"auto"`` the units' OBS order, :mod:`idapgraph.stages.obs`), losses measured at
    the allowed counts nearest to :data:`LOSS_KEEPS` (healed, only the layers that lost
    channels refitted, on :func:`~idapgraph.stages.select.probe_batches`),
    allocation. A group that is not the original's of its key with ``plan``'s units gone is
    not cut."""
    o = s.opts
    left = {g.key: g.n_units - len(plan.remove.get(g.key, ())) for g in s.a.coupling.groups}
    groups = now.coupling.groups
    matched = [left.get(g.key) == g.n_units for g in groups]
    quanta = [int(q) if m else g.n_units for g, q, m in
              zip(groups, select_pass.unit_quanta(now.coupling, o.round_to), matched)]
    counts = [allocate_pass.probe_counts(g.n_units, q, o.min_keep, LOSS_KEEPS)
              for g, q in zip(groups, quanta)]
    sc, losses = measured_losses(now, cal, select_stage.scores(now, o.method, cal, o.loss, o.seed),
                                 o, counts)
    s.group_losses.append({g.key: {str(k): round(v, 6) for k, v in ls.items()}
                           for g, ls in zip(groups, losses) if ls})
    return allocate_pass.allocate(now.graph, now.coupling, sc, losses, flops=share["flops"],
                                  params=share["params"], min_keep=o.min_keep, round_to=quanta)


def measured_losses(a: Analysis, batches, sc: list, o, counts=None) -> tuple[list, list]:
    """One round's measurement on ``a``: the units in their OBS order where ``o.order`` asks
    for it (:mod:`idapgraph.stages.obs`; ``sc``, the method's scores, elsewhere), then each
    group's healed loss at ``counts`` (default: :data:`LOSS_KEEPS` of its units) on
    :func:`~idapgraph.stages.select.probe_batches`, only the layers that lost channels
    refitted. Used by the FLOPs/params rounds and by latency targets. Returns (scores, losses)."""
    if o.order in ("obs", "auto"):
        sc = obs_stage.scores(a, batches, sc, o.min_keep, convs_only=o.order == "auto")
    return sc, group_losses(a, sc, select_stage.probe_batches(a, batches), o.min_keep,
                            o.progress, counts=counts, drifted=False)


def composed(a: Analysis, plan: Plan, step: Plan) -> Plan:
    """``plan`` followed by ``step``, a plan on the model ``plan`` left: a unit ``j`` of a
    group there is the ``j``-th unit ``plan`` kept of the original's group of that key."""
    out = {k: set(v) for k, v in plan.remove.items()}
    n_units = {g.key: g.n_units for g in a.coupling.groups}
    for key, units in step.remove.items():
        kept = [u for u in range(n_units[key]) if u not in out.get(key, ())]
        out.setdefault(key, set()).update(kept[j] for j in units)
    return Plan(remove={k: sorted(v) for k, v in out.items() if v},
                units={k: n_units[k] for k, v in out.items() if v}, meta=dict(plan.meta))
