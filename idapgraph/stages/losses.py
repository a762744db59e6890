"""Measured group losses: the calibration output error of cutting one channel group alone,
healed, at a few kept counts -- one scale across groups for the latency MILP
(``measure_groups``) and for the FLOPs/params allocation (:mod:`idapgraph.passes.allocate`)."""

from __future__ import annotations


from ..analysis import Analysis
from ..ir.plan import Plan
from ..passes import prune as prune_pass
from ..passes import select as select_pass
from . import heal as heal_stage
from .state import released

# the shares of a group's units kept when its loss is measured (see group_losses)
LOSS_KEEPS = (0.25, 0.5, 0.75)


def group_losses(a: Analysis, scores, batches, min_keep: float, progress=None,
                 counts: list[list[int]] | None = None,
                 drifted: bool = True) -> list[dict[int, float]]:
    """Per group: kept count -> calibration output error of keeping only that many of its
    highest-scoring units, the rest removed and healed by least squares (every other group
    whole), at the shares ``LOSS_KEEPS`` (or at ``counts[i]`` for group ``i``): one scale for
    every group and for the blocks' bypass errors
    (:func:`idapgraph.passes.latency.measured_importance`). Unit scores are comparable
    within a group only, so without it the solver weighs a group by its unit count. Costs a
    healed model per measurement (MNIST CNN: 27 in about 20 s). On the MNIST CNN with pinned
    tables, plans for predicted latencies 0.7 to 0.4 scored 94.4-96.9 % top-1 after
    least-squares healing, the unit-count weighting 80.5-95.5 %; measured without healing
    (masked), the losses saturate and did worse. ``drifted=False`` refits only the layers that
    lost input channels (the FLOPs targets' allocation: a fraction of the time), and the
    group's probes share the original's values at those layers' outputs (``probe`` of
    :func:`idapgraph.stages.heal.reconstruct`)."""
    out, trace = [], None if drifted else a.model.trace(batches)
    for i, (g, s) in enumerate(zip(a.coupling.groups, scores)):
        lo, got = select_pass.min_kept(g.n_units, min_keep), {}
        probe = None if drifted else heal_stage.Probe(trace)
        wanted = counts[i] if counts is not None else \
            [max(lo, int(round(share * g.n_units))) for share in LOSS_KEEPS]
        for k in wanted:
            if k < g.n_units and k not in got:
                cut = Plan(remove={g.key: select_pass.lowest_units(s, g.n_units - k)},
                           meta={"backend": a.graph.backend})
                rewrite = prune_pass.resolve(a.graph, a.coupling, cut)
                _, rep = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches,
                                         mode="lsq", drifted=drifted, probe=probe)
                # the error of the model healing keeps (healed, or not where that is worse;
                # probes: healed)
                got[k] = float(rep.error_after if probe is not None else
                               min(rep.error_before, rep.error_after))
                del _, rep
                released()
        out.append(got)
        if progress is not None:
            progress("group losses", i + 1, len(scores))
    return out
