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
    :func:`idapgraph.stages.latency.select`'s, ``measure_groups``
    :func:`idapgraph.stages.measured.run`'s."""
    o = s.opts
    if o.latency is not None:
        return
    if o.plan is not None:
        s.plan = o.plan
    elif not o.measure_groups:
        settle(s, select_plan(s))


def settle(s: State, sel) -> None:
    """``s.plan`` and ``s.reached`` from the selection ``sel``, with a warning where it falls
    short of the targets."""
    o, a = s.opts, s.a
    s.plan, s.reached = sel.plan, sel.reached
    if not sel.reached:
        s.warn(f"target not reachable: frozen channels and the per-group minimum "
               f"({o.min_keep:.0%}) leave FLOPs at {sel.flops / max(a.cost.flops, 1):.3f} "
               f"and params at {sel.params / max(a.cost.params, 1):.3f} of the original",
               stacklevel=4)


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
        sc = scores(a, o.method, batches, o.loss, o.seed)
        return select_pass.select(g, coupling, guard(s, batches, sc), **_target(o))
    return _iterative(s, batches)


#: A group whose smallest allowed cut (its rounding quantum: 8 of a 16-channel group) removes at
#: least this share of its units is measured before the selection may cut it ...
COARSE_CUT = 0.25
#: ... and ranked after every other group's units (cut only where the target needs it) when that
#: cut alone, zeroed, moves the calibration outputs by more than this share of their energy.
#: Scores are normalised within each group, so they cannot say that a group is more important
#: than another; on the pretrained CIFAR ResNet-56 the first 8 of the 16 stage-1 stream channels
#: (coupled through the zero-padded shortcuts into every stage) move the logits by 1.16 of their
#: energy, the inner 16-channel groups by 0.002-0.05, and cutting the stream as the scores rank
#: it took top-1 at 0.5 FLOPs from 76.5 % to 49.7 % (BENCHMARKS.md).
PROTECT_ERROR = 0.1
#: ... and by more than this many times the median measured group's: an outlier. (Where every
#: coarse group is sensitive -- the MNIST CNN's 16-channel groups -- ranking them all last only
#: starves the rest: top-1 at 0.5 FLOPs fell from 88 % to 20 %.)
OUTLIER = 10.0
#: Calibration samples the measurements run on (spread over the calibration set) ...
PROBE_SAMPLES = 64
#: ... and no more than one probe's model run of this many FLOPs holds (:func:`sample_flops`,
#: multiply-adds as idapgraph counts them, a sample; at least one batch): a few seconds of
#: a 2-core CPU. Image models keep their 64 samples up to about ResNet-34 at 224 px (ResNet-50,
#: 4.1 GFLOPs: 36 samples); SmolLM2-135M on 128-token windows (17.8 GFLOPs each) gets 8 windows.
PROBE_FLOPS = 1.5e11


def guard(s: State, batches, sc: list[np.ndarray]) -> list[np.ndarray]:
    """``sc`` with the protected groups' units (:data:`COARSE_CUT`, :data:`PROTECT_ERROR`,
    :data:`OUTLIER`) ranked last, measured once on the original with ``sc``'s order, on
    :func:`probe_batches` (real data only; the report lists the protected
    groups with their measured error)."""
    o, a = s.opts, s.a
    if s.protected is None:
        s.protected = {}
        if s.kind != "data":
            return sc
        error = a.model.output_error(probe_batches(a, batches))
        quanta = select_pass.unit_quanta(a.coupling, o.round_to)
        measured = {}
        for gr, q, units in zip(a.coupling.groups, quanta, sc):
            if gr.n_units <= q or q < COARSE_CUT * gr.n_units:
                continue
            cut = Plan(remove={gr.key: select_pass.lowest_units(units, q)},
                       meta={"backend": a.graph.backend})
            measured[gr.key] = error(a.model.emit(prune_pass.resolve(a.graph, a.coupling, cut),
                                                  "zero"))
        typical = float(np.median(list(measured.values()))) if measured else 0.0
        s.protected = {k: round(float(e), 4) for k, e in measured.items()
                       if e > PROTECT_ERROR and e > OUTLIER * typical}
    if not s.protected:
        return sc
    nonempty = [u for u in sc if len(u)]
    lift = max(map(np.max, nonempty)) - min(map(np.min, nonempty)) + 1.0  # above every score
    return [u + lift if gr.key in s.protected else u for gr, u in zip(a.coupling.groups, sc)]


def _target(o) -> dict:
    return {"flops": o.flops, "params": o.params, "min_keep": o.min_keep, "round_to": o.round_to}


def probe_batches(a: Analysis, batches: list) -> list:
    """The calibration batches measurements run on: :data:`PROBE_SAMPLES` samples, fewer where
    a sample costs more than :data:`PROBE_FLOPS` allows."""
    return spread_samples(batches, max(1, min(PROBE_SAMPLES, int(PROBE_FLOPS // max(
        sample_flops(a, batches), 1)))), a.model.exact_batch)


def sample_flops(a: Analysis, batches: list) -> float:
    """The model's FLOPs on one calibration sample: the counted FLOPs scaled by the first
    input's elements in a sample over those it was counted at (a symbolic axis, such as an
    ONNX model's sequence, is counted at size 1)."""
    inputs = a.graph.inputs
    shape = a.graph.shape(inputs[0]) if inputs else None
    if not batches or shape is None or len(shape) < 1:
        return float(a.cost.flops)
    counted = math.prod(1 if d is None else int(d) for d in shape[1:])
    return a.cost.flops * int(np.prod(np.shape(batches[0][0])[1:])) / max(counted, 1)


def spread_samples(batches: list, n: int, exact: bool = False) -> list:
    """About ``n`` calibration samples spread evenly over all of ``batches`` (all of them if
    they hold no more): every ``total/n``-th sample, each batch cut down to its share; where
    the model takes only its own batch size (``exact``) or a batch's arrays differ in length,
    evenly spaced whole batches holding at least ``n``. Calibration sets sorted by class are
    common (CIFAR-10's test file is; so is ImageNet's): the first 64 of 260 class-balanced
    CIFAR images are three classes of ten. With them, the order of the same 260 images moved
    ResNet-56's top-1 at 0.5 FLOPs by 1.2 points (spread, three orders: by 0.8), and at 0.7
    FLOPs the two orders' mean is 0.2 higher spread (BENCHMARKS.md, twenty-third session)."""
    sizes = [len(b[0]) for b in batches]
    total = sum(sizes)
    if total <= n:
        return list(batches)
    if exact or any(len(a) != k for b, k in zip(batches, sizes) for a in b):
        need = -(-n // max(1, max(sizes)))
        while need < len(batches) and sum(sizes[i] for i in _spaced(len(batches), need)) < n:
            need += 1
        return [batches[i] for i in _spaced(len(batches), need)]
    picks, out, start = np.floor(np.arange(n) * (total / n)).astype(np.int64), [], 0
    for b, k in zip(batches, sizes):
        local = picks[(picks >= start) & (picks < start + k)] - start
        if len(local):
            out.append(tuple(a[local] for a in b))
        start += k
    return out


def _spaced(count: int, k: int) -> list[int]:
    """``k`` of ``range(count)`` evenly spaced, the first included."""
    return sorted({int(i * count / k) for i in range(k)})


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
        sc = guard(s, batches, scores(a, o.method, batches, o.loss, o.seed, current))
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
