"""The paper's pipeline with fine-tuning between steps (torch): filters in ``steps`` steps, then
layers, each step followed by ``finetune(student, teacher)``, with a per-step log.

Each step is a whole :func:`idapgraph.compress` of the current (already pruned and fine-tuned)
module toward the step's share of the target, ``target^(t/steps)`` of the original FLOPs or
parameters, so every step scores and heals the model it actually prunes. The teacher handed to
``finetune`` is the previous step's model (the original for the first step). See
:func:`idapgraph.distill` for a built-in ``finetune``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from . import stages
from .analysis import analyze
from .backends import is_torch_module
from .errors import InputError
from .options import CompressOptions
from .results import Result


def run(model, example_inputs, o: CompressOptions) -> Result:
    """Returns a :class:`~idapgraph.results.Result`: the last step's module and plan, a report
    against the original model whose ``pipeline`` lists every step."""
    if not is_torch_module(model):
        raise InputError("finetune/evaluate need a torch module (fine-tuning runs in torch)")
    steps, flops, params = o.finetune_steps, o.flops, o.params
    finetune, evaluate = o.finetune, o.evaluate
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"finetune_steps must be an integer >= 1, got {steps!r}")
    blocks, max_error = o.blocks, o.max_error
    ref = analyze(model, example_inputs)
    batches, _ = ref.model.calibration(o.calib, o.seed)
    error = ref.model.output_error(batches)
    base_flops, base_params = ref.cost.flops, ref.cost.params
    teacher, current, now = model, model, ref.cost  # ``now``: the current model's cost
    log: list[dict[str, Any]] = []
    first = last = None
    units = groups = stored = 0

    def record(stage: str, res) -> None:
        nonlocal current, teacher, now
        current = res.model
        if finetune is not None:
            tuned = finetune(current, teacher)
            current = tuned if tuned is not None else current
            current.eval()
        teacher = copy.deepcopy(current)
        now = analyze(current, example_inputs).cost  # once per step, reused below
        entry = {"step": len(log) + 1, "stage": stage, "flops": now.flops,
                 "params": now.params, "error": error(current)}
        if evaluate is not None:
            entry["metric"] = float(evaluate(current))
        log.append(entry)

    targets = (flops, params)
    if any(t is not None for t in targets):
        for t in range(1, steps + 1):
            step_kw: dict[str, Any] = {"blocks": 0, "max_error": None, "flops": None,
                                       "params": None}
            for name, ratio, base, cur in (("flops", flops, base_flops, now.flops),
                                           ("params", params, base_params, now.params)):
                if ratio is not None:
                    step_kw[name] = min(1.0, ratio ** (t / steps) * base / max(cur, 1))
            res = stages.compress(current, example_inputs, replace(o, **step_kw))
            first = first or res
            last = res
            units += res.report.units_removed
            groups = max(groups, res.report.groups_pruned)
            record("filters", res)
    if blocks or max_error is not None:
        res = stages.compress(current, example_inputs, replace(o, flops=None, params=None))
        first = first or res
        last = res
        stored = res.report.params_constants  # mean constants: buffers, counted as parameters
        record("blocks", res)
    if last is None:
        raise InputError("give a target: flops=R and/or params=R, or blocks=N / max_error=E")
    after = {"flops": now.flops, "params": now.params + stored}
    reached = all(r is None or after[n] <= r * b + 0.5 for n, r, b in
                  (("flops", flops, base_flops), ("params", params, base_params)))
    rep = replace(last.report, flops_before=base_flops, params_before=base_params,
                  flops_after=after["flops"], params_after=after["params"], reached=reached,
                  target={"flops": flops, "params": params},
                  groups=first.report.groups, units_removed=units, groups_pruned=groups,
                  pipeline=log)
    return Result(model=current, plan=last.plan, report=rep)
