"""The report stage: the compressed model's cost counted on the rewritten graph (healing's added
biases and stage 2's stored means included), the targets checked against it, and the
:class:`~idapgraph.results.Report` assembled."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..ir.plan import Rewrite
from ..passes import cost as cost_pass
from ..results import Report, Result
from .state import State


def run(s: State) -> Result:
    a, o, g, rewrite = s.a, s.opts, s.a.graph, s.rewrite
    after = cost_pass.count(g, lambda t: rewrite.new_shapes[t], removed=s.gone)
    bias_flops, bias_params = added_bias_cost(g, rewrite, s.heal, s.gone)
    if s.heal.kept and s.heal.corrections:
        a.model.stamp(s.out, "idapgraph.healing",
                      {k: v for k, v in asdict(s.heal).items()
                       if k not in ("bias_added", "rows_per_input")})
    final = {"flops": (a.cost.flops, after.flops + bias_flops),
             "params": (a.cost.params, after.params + s.stored + bias_params)}
    for name, ratio in (("flops", o.flops), ("params", o.params)):
        before, now = final[name]
        if s.reached and ratio is not None and now > ratio * before + 0.5:
            s.reached = False  # healing's added biases (or stored means) pushed it over
            s.warn(f"{name} target {ratio} missed after healing: {now / max(before, 1):.4f} of "
                   f"the original (biases healing added: {bias_params} parameters; stored "
                   f"means: {s.stored}); ask for a little less or use heal='none'")
    coupling, plan = a.coupling, s.plan
    report = Report(
        backend=g.backend, flops_before=a.cost.flops, flops_after=final["flops"][1],
        params_before=a.cost.params, params_after=final["params"][1], target=o.target,
        reached=s.reached, method=o.method, latency_target=s.lat_info,
        groups=len(coupling.groups), groups_pruned=sum(1 for v in plan.remove.values() if v),
        units_removed=plan.n_removed, frozen=[asdict(f) for f in coupling.frozen],
        warnings=s.warnings, calibration=s.kind, steps=s.log, heal=asdict(s.heal),
        protected=dict(s.protected or {}), group_losses=s.group_losses,
        order=o.order if s.group_losses is not None else None,
        blocks_bypassed=s.bypassed, block_scores=s.block_scores, params_constants=s.stored,
        round_to=o.round_to, keep=o.keep, kept_nodes=[n for n in g.nodes if n in s.kept_nodes],
        layers=cost_pass.layer_changes(g, a.cost, after, lambda t: rewrite.new_shapes[t],
                                       s.gone))
    return Result(model=s.out, plan=plan, report=report)


def added_bias_cost(g, rewrite: Rewrite, rep, gone: set[str]) -> tuple[int, int]:
    """FLOPs and parameters of the biases healing added to bias-less layers (kept healing only;
    a layer a later bypass removed counts nothing). A bias costs 2 FLOPs per output element, as
    in :mod:`idapgraph.passes.cost`."""
    if not rep.kept:
        return 0, 0
    flops = params = 0
    for node, size in rep.bias_added.items():
        if node in gone:
            continue
        shape = rewrite.new_shapes[g.nodes[node].outputs[0]]
        flops += 2 * int(np.prod([1 if d is None else d for d in shape], dtype=np.int64))
        params += size
    return flops, params
