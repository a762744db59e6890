"""Healing: the pruned model's parameters refitted on calibration data so that it computes
what the original did (least squares, statistics matching or bias compensation; the rules are
in :mod:`idapgraph.passes.heal` and :mod:`idapgraph.passes.reconstruct`, this module runs them
through the backend)."""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..ir.plan import Rewrite
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
    s.out, s.heal = heal(s.a, s.out, s.rewrite, batches, mode=s.opts.heal)
    if s.heal.kept:
        s.a.model.validate(s.out)


def heal(a: Analysis, pruned, rewrite: Rewrite | None, batches, chunks: int = 8,
          mode: str = "stats"):
    """``mode="stats"``: statistics matching; ``mode="bias"``: bias compensation (see
    :mod:`idapgraph.passes.heal`). Keeps the better of healed and unhealed by output error on the
    calibration data. ``rewrite=None``: ``pruned`` is a masked (zeroed, same-shape) model."""
    g, m = a.graph, a.model
    rep = heal_pass.HealReport(method=mode)
    if mode == "lsq":
        return reconstruct(a, pruned, rewrite, batches, rep)
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
            lambda n, c=current: m.can_add_bias(c, n))
        current = set_params(a, current, updates, new_bias, rep)
        rep.corrections += records
        rep.notes.append(f"bias compensation on {len(comp)} layers")
    scales = []
    for chunk in heal_pass.chunks(sites, chunks):
        cur = heal_pass.ChannelStats({(s.tensor, s.axis) for s in chunk})
        m.run(current, cur.tensors, batches, cur)
        corr = heal_pass.corrections(chunk, ref, cur)
        updates, new_bias = heal_pass.affine_updates(
            corr, lambda n, c=current: m.get_param(c, n), lambda n, c=current: m.can_add_bias(c, n))
        current = set_params(a, current, updates, new_bias, rep)
        rep.layers += len(corr)
        rep.corrections += [heal_pass.affine_record(c) for c in corr]
        scales.extend(float(x) for c in corr for x in (c.scale.min(), c.scale.max()))
    if scales:
        rep.scale_min, rep.scale_max = min(scales), max(scales)
    rep.error_after = error(current)
    rep.kept = rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def reconstruct(a: Analysis, pruned, rewrite: Rewrite, batches, rep, per_pass: int = 1):
    """Least-squares reconstruction (see :mod:`idapgraph.passes.reconstruct`) of the layers that
    lost input channels, one layer per calibration pass in topological order, so each fit sees
    the inputs the fits before it made. (Refitting every later layer too, or the layers after a
    bypassed block, lowered the calibration error but hurt held-out MiniLM embeddings: cosine
    0.79 -> 0.67 at 0.7 FLOPs + 2 layers, so it is not done.)"""
    g, m = a.graph, a.model
    error = m.output_error(batches)
    rep.error_before = error(pruned)
    sites = recon_pass.sites(g, rewrite) if rewrite is not None else []
    targets = recon_pass.Targets(sites)
    if sites:
        m.run(m.source, targets.tensors, batches, targets)
    kernels = {s.node: recon_pass.kernel(g, s) for s in sites}
    current, gains = pruned, []
    for i in range(0, len(sites), per_pass):
        chunk = sites[i:i + per_pass]
        normal = recon_pass.Normal(chunk, targets, kernels)
        m.run(current, normal.tensors, batches, normal)
        updates, new_bias = {}, {}
        for s in chunk:
            w = m.get_param(current, s.weight)
            b = m.get_param(current, s.bias) if s.bias is not None else None
            pb = recon_pass.post_bias(g, s)
            intercept = b is not None or pb is not None or m.can_add_bias(current, s.node)
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
            elif intercept:
                new_bias[s.node] = fit.intercept.astype(np.asarray(w).dtype)
            gains.append((fit.residual_before, fit.residual_after))
        current = set_params(a, current, updates, new_bias, rep)
    rep.layers = len(gains)
    if gains:
        rep.notes.append("least-squares refit of %d layers: residual %.3g -> %.3g (median)" % (
            len(gains), float(np.median([x for x, _ in gains])),
            float(np.median([y for _, y in gains]))))
    rep.error_after = error(current)
    rep.kept = rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def set_params(a: Analysis, current, updates: dict, new_bias: dict, rep):
    """Apply healing's parameter updates; a new bias a BatchNorm can absorb goes into its
    running mean instead (:func:`passes.heal.absorb_shifts`), the others are recorded in
    ``rep.bias_added`` (the report counts them)."""
    if new_bias:
        means, new_bias = heal_pass.absorb_shifts(a.graph, new_bias,
                                                  lambda n: a.model.get_param(current, n))
        updates = {**updates, **means}
    rep.bias_added.update({k: int(np.size(v)) for k, v in new_bias.items()})
    return a.model.set_params(current, updates, new_bias) if updates or new_bias else current
