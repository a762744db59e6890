"""Healing: the pruned model's parameters refitted on calibration data so that it computes
what the original did (least squares, statistics matching or bias compensation; the rules are
in :mod:`idapgraph.passes.heal` and :mod:`idapgraph.passes.reconstruct`, this module runs them
through the backend)."""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..ir.plan import Rewrite
from ..passes import cost as cost_pass
from ..passes import heal as heal_pass
from ..passes import reconstruct as recon_pass
from .state import State


def run(s: State) -> None:
    """The heal stage: ``s.out`` healed (kept only where it lowers the calibration error)."""
    if s.opts.heal == "none" or not s.plan.remove:
        return
    batches, real = s.a.model.calibration(s.opts.calib, s.opts.seed)
    if not real and s.kind == "none":
        s.warn("no calibration data: healing statistics come from seeded standard-normal inputs")
    room = _room(s)
    s.out, s.heal = heal(s.a, s.out, s.rewrite, batches, mode=s.opts.heal, room=room)
    if room.denied:
        s.heal.notes.append(f"no bias added to {len(room.denied)} healed layers: the "
                            "FLOPs/params target leaves no room for them")
    if s.heal.kept:
        s.a.model.validate(s.out)


def _room(s: State) -> heal_pass.BiasRoom:
    """What the FLOPs/params target leaves for biases healing adds (the rewritten model's
    counts, stage 2's stored means included)."""
    a, o, rw = s.a, s.opts, s.rewrite
    after = cost_pass.count(a.graph, lambda t: rw.new_shapes[t], removed=s.gone)
    flops = None if o.flops is None else o.flops * a.cost.flops - after.flops
    params = None if o.params is None else o.params * a.cost.params - after.params - s.stored
    return heal_pass.BiasRoom(a.graph, lambda t: rw.new_shapes[t], flops, params)


def heal(a: Analysis, pruned, rewrite: Rewrite | None, batches, chunks: int = 8,
          mode: str = "stats", drifted: bool = True, probe: Probe | None = None,
          room: heal_pass.BiasRoom | None = None):
    """``mode="stats"``: statistics matching; ``mode="bias"``: bias compensation (see
    :mod:`idapgraph.passes.heal`). Keeps the better of healed and unhealed by output error on the
    calibration data. ``rewrite=None``: ``pruned`` is a masked (zeroed, same-shape) model.
    ``drifted=False`` (least squares): only the layers that lost input channels are refitted;
    ``probe``: see :func:`reconstruct`. ``room``: biases go to bias-less layers only while it
    lasts (None: no limit)."""
    g, m = a.graph, a.model
    rep = heal_pass.HealReport(method=mode)
    if room is None:
        room = heal_pass.BiasRoom(g, g.shape)
    if mode == "lsq":
        return reconstruct(a, pruned, rewrite, batches, rep, drifted, probe, room=room)
    if mode == "bn":
        if heal_pass.norm_sites(g):
            return renormalize(a, pruned, batches, rep)
        rep.notes.append("no BatchNorm with running statistics: least-squares refit instead")
        return reconstruct(a, pruned, rewrite, batches, rep, room=room)
    sites = heal_pass.sites(g, rewrite) if mode == "stats" else []
    # measured on the MNIST CNN at 0.5 FLOPs: matching alone 92.6 %, compensation then matching
    # 63.7 %, compensation alone 15.8 % -- so the modes do not stack
    comp = heal_pass.compensation_sites(g, rewrite) if rewrite is not None and mode == "bias" else []
    ref, _ = m.reference(batches, {(s.tensor, s.axis) for s in sites} | {(c.x, c.axis) for c in comp})
    error = m.output_error(batches)
    rep.error_before = error(pruned)
    current = pruned
    if comp:
        updates, new_bias, records = heal_pass.bias_compensation(
            comp, ref, lambda n: g.tensors[n].value(), lambda n, c=current: m.get_param(c, n),
            lambda n, c=current: m.can_add_bias(c, n) and room.take(n))
        current = set_params(a, current, updates, new_bias, rep)
        rep.corrections += records
        rep.notes.append(f"bias compensation on {len(comp)} layers")
    scales = []
    for chunk in heal_pass.chunks(sites, chunks):
        cur = heal_pass.ChannelStats({(s.tensor, s.axis) for s in chunk})
        m.run(current, cur.tensors, batches, cur)
        corr = heal_pass.corrections(chunk, ref, cur)
        updates, new_bias = heal_pass.affine_updates(
            corr, lambda n, c=current: m.get_param(c, n),
            lambda n, c=current: m.can_add_bias(c, n) and room.take(n))
        current = set_params(a, current, updates, new_bias, rep)
        rep.layers += len(corr)
        rep.corrections += [heal_pass.affine_record(c) for c in corr]
        scales.extend(float(x) for c in corr for x in (c.scale.min(), c.scale.max()))
    if scales:
        rep.scale_min, rep.scale_max = min(scales), max(scales)
    rep.error_after = error(current)
    rep.kept = rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def renormalize(a: Analysis, pruned, batches, rep):
    """BatchNorm re-estimation: every BatchNorm's running mean and variance recomputed from the
    pruned model's own activations on the calibration data, in topological order (each sees
    the statistics set before it), as a forward pass in train mode with ``momentum=None`` does
    in torch. Not the default: on the pretrained CIFAR-10 ResNet-56 (tools/cifar_accuracy.py,
    260 class-balanced calibration images, 9,740 held out; original 83.16 %) it keeps 80.27 % at
    0.7 FLOPs and 71.27 % at 0.5, against lsq's 81.54 % and 77.60 % (and lsq followed by it:
    79.83 %, 75.97 %); it beats no healing (64.84 %, 31.08 %) and Torch-Pruning L2 + the same
    re-estimation (78.12 %, 65.05 %). On EfficientNet-Lite0 at 0.7 the order flips (lsq
    14.75 %, this 20.75 %, lsq followed by it 30.5 %; BENCHMARKS.md). Its logits can be further from the original's than the
    unhealed model's while its top-1 is far better, so it is kept where it lowers the output
    error or, for a classifier, raises the share of calibration samples
    whose top-1 class is the original's."""
    m = a.model
    _, ref_out = m.reference(batches, set())
    before = m.run(pruned, [], batches, None, outputs=True)
    rep.error_before = m.error_of(batches, before)
    step = m.stepper(pruned, batches)
    current = _reestimate(a, pruned, step, batches, rep)
    after = step.results() if step is not None else m.run(current, [], batches, None,
                                                          outputs=True)
    rep.error_after = m.error_of(batches, after)
    agree = heal_pass.agreement(ref_out, before), heal_pass.agreement(ref_out, after)
    rep.notes.append(f"BatchNorm statistics re-estimated at {rep.layers} layers")
    if agree[0] is not None and agree[1] is not None:
        rep.notes.append("calibration top-1 agreement with the original %.4f -> %.4f" % agree)
    rep.kept = rep.error_after <= rep.error_before or (
        agree[0] is not None and agree[1] is not None and agree[1] > agree[0])
    return (current if rep.kept else pruned), rep


def _reestimate(a: Analysis, pruned, step, batches, rep):
    """The BatchNorms of ``pruned`` re-estimated in order, stepping ``step`` (None: one
    calibration pass per BatchNorm); returns the model."""
    m = a.model
    current = step.model if step is not None else pruned
    for s in heal_pass.norm_sites(a.graph):
        stats = heal_pass.ChannelStats({(s.x, 1)})
        if step is not None:
            for x in step.advance_to(s.x):
                stats({s.x: x})
        else:
            m.run(current, stats.tensors, batches, stats)
        new = heal_pass.reestimated(s, stats, m.get_param(current, s.mean),
                                    m.get_param(current, s.var))
        if new is None:
            continue
        if step is not None:
            m.apply_params(step, new, {})
        else:
            current = m.set_params(current, new, {})
        rep.layers += 1
        rep.corrections.append({"layer": s.node, "kind": "renorm"})
    return current


class Probe:
    """What the measurements of one group's cuts share (:func:`reconstruct`'s ``probe``): the
    original's values at the refitted layers' outputs, and the trace of the original
    (:meth:`Model.trace`, shared by every group's probes) they start from."""

    def __init__(self, trace=None) -> None:
        self.kept: dict = {}
        self.trace = trace


def reconstruct(a: Analysis, pruned, rewrite: Rewrite, batches, rep, drifted: bool = True,
                probe: Probe | None = None, *, room: heal_pass.BiasRoom):
    """Least-squares reconstruction (see :mod:`idapgraph.passes.reconstruct`) of the layers that
    lost input channels or see changed inputs (:func:`passes.reconstruct.sites`), in
    topological order, each fit seeing the inputs the fits before it
    made. Where the backend can step a model (:meth:`Model.stepper`: torch; ONNX by graph
    segments), the pruned and the original model advance together over all calibration
    batches, layer by layer, so the whole refit costs about one calibration pass of each;
    elsewhere (ONNX models with external data) it takes one pass per refitted
    layer, so only the layers that lost input channels are refitted there.

    ``probe`` (a :class:`Probe`, shared by calls that cut the same group; measurements only,
    ``pruned`` is the caller's to change): the refitted model is returned without measuring the
    unhealed one (``error_before`` is NaN), the original's values at the refitted layers'
    outputs are kept in ``probe`` for the next call instead of being stepped to again (a third
    of a measured group loss's time), and both models run only from the first node the cut
    changed, from the original's values there (``probe.trace``; SmolLM2-135M's measured
    compress at 0.8 params: 719 s against 1,599 s, both beside other work, same losses).
    ``room``: what new biases of bias-less layers may take (:class:`passes.heal.BiasRoom`)."""
    g, m = a.graph, a.model
    error = m.output_error(batches)
    rep.error_before = float("nan") if probe is not None else error(pruned)
    wide: list[str] = []
    sites = recon_pass.sites(g, rewrite, drifted, wide) if rewrite is not None else []
    # stepped only where the original steps too (its values at each refitted layer)
    step, ref = _steppers(m, pruned, batches, sites, probe) if sites and m.steppable else (
        None, None)
    if step is None:  # a calibration pass per layer: only the layers that lost channels
        wide.clear()
        sites = recon_pass.sites(g, rewrite, False, wide) if rewrite is not None else []
    if wide:
        rep.notes.append(f"not refitted, more than {recon_pass.MAX_FEATURES} inputs each (memory):"
                         f" {', '.join(wide[:4])}{' ...' if len(wide) > 4 else ''}")
    kernels = {s.node: recon_pass.kernel(g, s) for s in sites}
    if step is not None:
        current, gains = _refit_stepped(a, step, sites, kernels, rep, ref, room)
        rep.error_after = m.error_of(batches, step.results())  # the stepped run, finished
    else:
        current, gains = _refit_by_passes(a, pruned, sites, kernels, batches, rep, room)
        rep.error_after = error(current)
    rep.layers = len(gains)
    if gains:
        rep.notes.append("least-squares refit of %d layers: residual %.3g -> %.3g (median)" % (
            len(gains), float(np.median([x for x, _ in gains])),
            float(np.median([y for _, y in gains]))))
    short = recon_pass.short_rows(rep.rows_per_input)
    if short:
        rep.notes.append(short)
    rep.kept = probe is not None or rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def _steppers(m, pruned, batches, sites, probe: Probe | None):
    """(the pruned model's stepper, the original's :class:`_Original`): for a probe with a trace
    (:meth:`Model.trace`) both start at the cut's first node, unless a refitted layer's input
    or output would lie behind that start; otherwise from the inputs (None, None: the backend
    does not step)."""
    kept = probe.kept if probe is not None else None
    start = probe.trace.start(pruned) if probe is not None and probe.trace is not None else None
    if start is not None:
        try:
            step = m.stepper(pruned, batches, copy=False, start=start[0])
            ref = _Original(m, batches, kept, start[1])
            if all(step.reaches(s.x) and ref.reaches(s.y) for s in sites):
                return step, ref
        except KeyError:  # a value needed later was not kept where the original is
            pass
    step = m.stepper(pruned, batches, copy=probe is None)
    return step, (_Original(m, batches, kept) if step is not None else None)


def _refit_stepped(a: Analysis, step, sites, kernels, rep, ref, room):
    """Every site refitted as the pruned model (``step``) reaches its input, against the
    original's output of the same layer (``ref``, an :class:`_Original`); returns (model,
    gains)."""
    m, gains = a.model, []
    for s in sites:
        targets = recon_pass.Targets([s])
        ys, xs = ref.advance_to(s.y), step.advance_to(s.x)
        r = _held_shortcut(step, ref, s)
        r_orig = ref.advance_to(r) if r else [None] * len(ys)
        r_pruned = step.advance_to(r) if r else [None] * len(xs)
        targets.batches = [_batch(s.y, y, r, v) for y, v in zip(ys, r_orig)]
        normal = recon_pass.Normal([s], targets, kernels, m.tmatmul, m.solve,
                                   _scales(a, step.model, [s]))
        for x, v in zip(xs, r_pruned):
            normal(_batch(s.x, x, r, v))
        updates, new_bias = _fits(a, step.model, [s], normal, rep, gains, room)
        updates, new_bias = param_changes(a, step.model, updates, new_bias, rep)
        if updates or new_bias:
            m.apply_params(step, updates, new_bias)
    return step.model, gains


def _held_shortcut(step, ref, s) -> str | None:
    """The shortcut of site ``s`` where both models hold its value already (None otherwise:
    stepping to it could run a layer before its refit)."""
    r = s.shortcut.tensor if s.shortcut is not None else None
    return r if r is not None and step.held(r) and ref.held(r) else None


def _batch(t: str, value, r: str | None, r_value) -> dict:
    return {t: value} if r is None else {t: value, r: r_value}


def _scales(a: Analysis, model, sites) -> dict:
    """Per site with a shortcut through BatchNorms: their per-channel scale in ``model``."""
    out = {}
    for s in sites:
        for norm in s.shortcut.norms if s.shortcut is not None else ():
            k = recon_pass.norm_scale(a.graph, norm, lambda n: a.model.get_param(model, n))
            out[s.node] = k if s.node not in out else out[s.node] * k
    return out


class _Original:
    """The original model's value of a tensor per batch: stepped to in topological order,
    kept in ``kept`` (a dict) where one is given."""

    def __init__(self, m, batches, kept: dict | None, start=None) -> None:
        self.m, self.batches, self.kept, self.step, self.start = m, batches, kept, None, start

    def _stepper(self):
        if self.step is None:
            self.step = self.m.stepper(self.m.source, self.batches, copy=False,
                                       start=self.start)
        return self.step

    def reaches(self, y: str) -> bool:
        """Whether :meth:`advance_to` can give ``y``."""
        return (self.kept is not None and y in self.kept) or self._stepper().reaches(y)

    def held(self, y: str) -> bool:
        """Whether :meth:`advance_to` gives ``y`` without running a node."""
        return (self.kept is not None and y in self.kept) or self._stepper().held(y)

    def advance_to(self, y: str):
        if self.kept is not None and y in self.kept:
            return self.kept[y]
        got = self._stepper().advance_to(y)
        if self.kept is not None:
            self.kept[y] = got
        return got


def _refit_by_passes(a: Analysis, pruned, sites, kernels, batches, rep, room):
    """Every site refitted after a whole calibration pass of the model with the fits before it
    applied; returns (model, gains)."""
    m, gains = a.model, []
    targets = recon_pass.Targets(sites)
    if sites:
        m.run(m.source, targets.tensors, batches, targets)
    current = pruned
    for s in sites:
        normal = recon_pass.Normal([s], targets, kernels, m.tmatmul, m.solve,
                                   _scales(a, current, [s]))
        m.run(current, normal.tensors, batches, normal)
        updates, new_bias = _fits(a, current, [s], normal, rep, gains, room)
        current = set_params(a, current, updates, new_bias, rep)
    return current, gains


def _fits(a: Analysis, current, chunk, normal, rep, gains, room):
    """The parameter updates (and new biases) of the sites of ``chunk`` whose least-squares fit
    lowers their calibration residual; records each in ``rep`` and ``gains``. A bias-less layer
    is fitted with an intercept (a new bias) only where ``room`` has room for it."""
    g, m = a.graph, a.model
    updates, new_bias = {}, {}
    for s in chunk:
        per = recon_pass.rows_per_input(normal, s)
        if per is not None:
            rep.rows_per_input[s.node] = round(per, 2)
        short = recon_pass.underdetermined(normal, s)
        if short:
            rep.notes.append(short)
            continue
        w = m.get_param(current, s.weight)
        b = m.get_param(current, s.bias) if s.bias is not None else None
        pb = recon_pass.post_bias(g, s)
        intercept = b is not None or pb is not None or (
            m.can_add_bias(current, s.node) and not room.refuses(s.node))
        fit = recon_pass.solve(s, normal, w, b, intercept)
        if fit is None or not fit.residual_after < fit.residual_before:
            continue
        updates[s.weight] = recon_pass.weight_update(fit, w)
        rep.corrections.append(recon_pass.refit_record(fit, w, updates[s.weight]))
        if b is not None:
            updates[s.bias] = fit.intercept.astype(np.asarray(b).dtype)
        elif pb is not None:
            old = m.get_param(current, pb)
            updates[pb] = (old + fit.intercept).astype(np.asarray(old).dtype)
        elif intercept and room.take(s.node):
            new_bias[s.node] = fit.intercept.astype(np.asarray(w).dtype)
        gains.append((fit.residual_before, fit.residual_after))
    return updates, new_bias


def param_changes(a: Analysis, current, updates: dict, new_bias: dict, rep):
    """Healing's parameter updates as applied: a new bias a BatchNorm can absorb goes into its
    running mean instead (:func:`passes.heal.absorb_shifts`), the others are recorded in
    ``rep.bias_added`` (the report counts them). Returns (updates, new biases)."""
    if new_bias:
        means, new_bias = heal_pass.absorb_shifts(a.graph, new_bias,
                                                  lambda n: a.model.get_param(current, n))
        updates = {**updates, **means}
    rep.bias_added.update({k: int(np.size(v)) for k, v in new_bias.items()})
    return updates, new_bias


def set_params(a: Analysis, current, updates: dict, new_bias: dict, rep):
    """``current`` with healing's parameter updates (:func:`param_changes`) applied."""
    updates, new_bias = param_changes(a, current, updates, new_bias, rep)
    return a.model.set_params(current, updates, new_bias) if updates or new_bias else current
