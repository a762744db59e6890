"""Stage 2, layer truncation: residual blocks bypassed, one at a time by lowest score while the
calibration output error allows (healed by substituting the branch's mean output), or the
blocks a plan names. The block rules are in :mod:`idapgraph.passes.blocks`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..analysis import Analysis
from ..errors import InputError
from ..ir.graph import Graph
from ..ir.plan import Plan
from ..passes import blocks as blocks_pass
from ..passes import prune as prune_pass
from . import select as select_stage
from .state import State, released


def run(s: State) -> None:
    """The truncate stage: the plan's blocks bypassed, or (``blocks=N`` / ``max_error``) the
    lowest-scoring ones chosen and bypassed; ``s.plan.bypass`` records them."""
    o = s.opts
    if not (s.plan.bypass or o.stage2):
        return
    if s.plan.bypass:
        s.out, s.bypassed, s.gone = bypass_planned(s.a, s.out, s.plan.bypass, s.kept_nodes)
    else:
        batches, _ = s.a.model.calibration(o.calib, o.seed)
        s.out, s.bypassed, s.gone, s.block_scores, s.stored = truncate(
            s.a, s.out, batches, n_blocks=o.blocks, max_error=o.max_error, score=o.block_score,
            mean_substitution=o.heal != "none", kinds=o.block_kinds, keep_nodes=s.kept_nodes,
            sized=o.params is not None)
    s.plan.bypass = list(s.bypassed)
    if o.blocks and len(s.bypassed) < o.blocks:
        s.reached = False
        s.warn(f"bypassed {len(s.bypassed)} of the {o.blocks} blocks asked for (no more found "
               "or error bound hit)")
    s.a.model.validate(s.out)


def bypassed(a: Analysis, model, keys: list[str]):
    """``model`` (this analysis' backend) with the blocks ``keys`` bypassed, no mean kept."""
    return bypass_planned(a, model, keys)[0]


def emitted(a: Analysis, plan: Plan):
    """``plan`` applied to the analysed model: channels removed, its blocks bypassed."""
    out = a.model.emit(prune_pass.resolve(a.graph, a.coupling, plan), "remove")
    return bypassed(a, out, plan.bypass) if plan.bypass else out


def live(alias: dict[str, str], tensor: str) -> str:
    """``tensor``, or what replaced it: the output of an add removed by a bypass without a
    constant no longer exists, its skip input took its place (followed through chains)."""
    while tensor in alias:
        tensor = alias[tensor]
    return tensor


def bypass_arg(g: Graph, b, const, alias: dict[str, str]) -> tuple:
    """``(add, skip, const)`` for the emitters' ``bypass``, with the skip of a chained block
    (``y2 = y1 + f2(y1)`` after ``y1 = x + f1(x)`` was bypassed) read where it lives now;
    records what replaces ``b``'s own add."""
    skip = live(alias, b.skip)
    if const is None:
        alias[g.nodes[b.add].outputs[0]] = skip
    return b.add, skip, const


def bypass_planned(a: Analysis, current, keys: list[str], keep_nodes=frozenset()):
    """``current`` with the blocks ``keys`` bypassed (no data needed, no mean substitution; a
    block inside another bypassed one goes with it). Returns (model, bypassed keys, their
    nodes)."""
    by_key = {b.key: b for b in blocks_pass.find(a.graph)}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise InputError(f"plan bypasses block(s) {missing}, which this model does not have")
    kept = [k for k in keys if not keep_nodes.isdisjoint(by_key[k].nodes)]
    if kept:
        raise InputError(f"plan bypasses block(s) {kept}, which hold nodes kept by --keep")
    chosen: list = []
    for b in sorted((by_key[k] for k in keys), key=lambda b: -len(b.nodes)):
        if not any(b.overlaps(c) for c in chosen):
            chosen.append(b)
    chosen.sort(key=lambda b: keys.index(b.key))
    alias: dict[str, str] = {}
    args = [bypass_arg(a.graph, b, None, alias) for b in chosen]
    out = a.model.bypass(current, args) if chosen else current
    return out, [b.key for b in chosen], {n for b in chosen for n in b.nodes}


def truncate(a: Analysis, current, batches, *, n_blocks: int | None, max_error: float | None,
             score: str, mean_substitution: bool, kinds=None,
             keep_nodes: set[str] = frozenset(), sized: bool = False):
    """Bypass the blocks with the smallest score one at a time, re-measuring after each, while
    the calibration output error stays within ``max_error`` or until ``n_blocks`` are gone.
    ``score``: ``relative`` ‖F(x)‖/‖x‖, ``influence`` (ShortGPT's 1 − cos) or ``measured``
    (SLEB-style: every candidate bypassed in turn, the one of the lowest output error goes).
    ``sized``: a params target is set, so a stored mean is never larger than its branch.
    ``kinds`` limits the candidates (see :data:`passes.blocks.BLOCK_KINDS`). Returns (model,
    bypassed keys, their nodes, their scores, elements of the stored means)."""
    g, m = a.graph, a.model
    blist = [b for b in blocks_pass.find(g) if (kinds is None or b.kind in kinds)
             and keep_nodes.isdisjoint(b.nodes)]
    error = m.output_error(batches)
    probe = select_stage.probe_batches(a, batches) if score == "measured" else None
    removed, nodes, scores, alias, stored = [], set(), {}, {}, 0
    while blist and (n_blocks is None or len(removed) < n_blocks):
        blist = [replace(x, skip=live(alias, x.skip)) for x in blist]
        norms = blocks_pass.BlockNorms(blist)
        m.run(current, norms.tensors, batches, norms)
        ranks = {x.key: norms.score(x.key, score) for x in blist} if score != "measured" else \
            _removal_errors(a, current, blist, alias, probe)
        b = min(blist, key=lambda x: ranks[x.key])
        consts = _mean_constants(g, b, norms, mean_substitution, sized)
        err, const, candidate, trial = _best_bypass(a, current, b, consts, alias, error,
                                                    measure=max_error is not None)
        if max_error is not None and err > max_error:
            break
        scores[b.key] = ranks[b.key]
        current, alias = candidate, trial
        stored += 0 if const is None else int(np.size(const))  # the mean is a stored tensor
        removed.append(b.key)
        nodes |= set(b.nodes)
        blist = [x for x in blist if not x.overlaps(b)]
    return current, removed, nodes, scores, stored


def _removal_errors(a: Analysis, current, blist, alias: dict, probe) -> dict[str, float]:
    """``block_score="measured"`` (SLEB-style greedy): per candidate, the output error of
    ``current`` with it bypassed outright, on the calibration batches ``probe``
    (:func:`~idapgraph.stages.select.probe_batches`), each variant run only from the bypassed
    block on (``Model.trace`` of ``current``)."""
    m, out = a.model, {}
    trace = m.trace(probe, current)
    for b in blist:
        out[b.key] = m.probe_error(m.bypass(current, [bypass_arg(a.graph, b, None, dict(alias))]),
                                   probe, trace)
        released()
    return out


def _mean_constants(g: Graph, b, norms, mean_substitution: bool, sized: bool) -> list:
    """Healing's candidates for ``b``: the branch's mean output as a constant -- no larger than
    the branch under a params target (:func:`blocks.fit_mean`), per position otherwise where
    shapes allow."""
    consts: list = []
    mean = norms.mean(b.key) if mean_substitution else None
    if mean is not None:
        budget = blocks_pass.branch_params(g, b)
        for cap in (budget, math.inf if not sized else budget):
            c = blocks_pass.fit_mean(mean, g.run_shape(b.branch), cap)
            if not any(np.shape(c) == np.shape(x) for x in consts):
                consts.append(c)
    return consts


def _best_bypass(a: Analysis, current, b, consts: list, alias: dict, error, measure: bool):
    """``b`` bypassed with each constant of ``consts`` and with none: the variant of the lowest
    calibration output error, as (error, constant, model, alias after it)."""
    best = None
    for const in consts + [None]:
        trial = dict(alias)  # only the chosen variant's alias is kept
        cand = a.model.bypass(current, [bypass_arg(a.graph, b, const, trial)])
        err = error(cand) if measure or len(consts) else None
        if best is None or (err is not None and err < best[0]):
            best = (err, const, cand, trial)
        del cand
        released()
    return best

