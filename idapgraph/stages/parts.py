"""``compress`` for a torch module that torch.fx cannot trace as a whole: its traceable parts
(:mod:`idapgraph.backends.torch_parts`) compressed one by one and put back.

A FLOPs or parameter target is for the whole model: the parts' share is counted by torch's
flop counter on the example inputs, and every part gets the ratio that brings the whole model
to the target when the untraced code (post-processing, modules called several times) keeps its
cost. Each part's outputs keep their widths; each part runs the full pipeline (selection,
healing on the part's own calibration inputs, captured from whole-model runs). The report
counts the whole model before and after, lists the parts and says why every other module with
parameters stayed as it was.
"""

from __future__ import annotations

from dataclasses import replace

from ..analysis import analyze
from ..backends import torch_parts
from ..errors import InputError
from ..ir.plan import Plan
from ..options import CompressOptions
from ..results import Report, Result

SEP = "::"  # a part's group keys in the merged plan: "<part>::<group>"


def refuse(o: CompressOptions) -> None:
    """Options that need one traced graph."""
    if o.latency is not None:
        raise InputError("this model traces with torch.fx only in parts: latency= needs the "
                         "whole graph (use flops=/params=, or compress its ONNX export)")
    if o.finetune is not None or o.evaluate is not None or o.blocks or o.plan is not None \
            or o.keep:
        raise InputError("this model traces with torch.fx only in parts: finetune=, evaluate=, "
                         "blocks=N, plan= and keep= need the whole graph (use "
                         "idapgraph.apply_plan for a plan)")


def part_ratio(ratio: float | None, whole: int, part_total: int, name: str) -> float | None:
    """The ratio each part keeps so that the whole model keeps ``ratio`` of ``whole`` while
    what lies outside the parts (``whole - part_total``) stays."""
    if ratio is None:
        return None
    if part_total <= 0:
        raise InputError(f"no {name} in the parts torch.fx traces: cannot reach a {name} target")
    r = (ratio * whole - (whole - part_total)) / part_total
    if r <= 0:
        raise InputError(f"{name} target {ratio} is out of reach: the parts that can be pruned "
                         f"hold {part_total / max(whole, 1):.3f} of the model's {name}")
    return min(r, 1.0)


def compress(model, example_inputs, o: CompressOptions, traced) -> Result:
    """``traced(module, args, options) -> Result``: one part's compression (the stages)."""
    refuse(o)
    split = torch_parts.split(model, example_inputs, o.calib)
    _drop_unprunable(split)
    if not split.parts:
        raise InputError("cannot trace the module with torch.fx, nor any submodule with "
                         "parameters of it: " + "; ".join(
                             f"{s['module']}: {s['reason']}" for s in split.skipped[:3]))
    ratios = {"flops": part_ratio(o.flops, split.flops, sum(p.flops for p in split.parts),
                                  "flops"),
              "params": part_ratio(o.params, split.params, sum(p.params for p in split.parts),
                                   "params")}
    results = {}
    for part in split.parts:
        po = replace(o, flops=ratios["flops"], params=ratios["params"], calib=part.calib)
        results[part.name] = traced(part.module, part.args, po)
    out = torch_parts.assemble(model, {n: r.model for n, r in results.items()})
    torch_parts.check(model, out, example_inputs)
    return Result(model=out, plan=merged_plan(results, o), report=_report(split, results, out,
                                                                           example_inputs, o))


def _drop_unprunable(split) -> None:
    """Parts without a prunable channel group (a detector's box predictor: every layer writes
    an output of the part) move to the skipped list; the others carry the target."""
    keep = []
    for part in split.parts:
        coupling = analyze(part.module, part.args).coupling
        if coupling.groups:
            keep.append(part)
            continue
        why = "; ".join(sorted({f.reason for f in coupling.frozen})) or "no channel groups"
        split.skipped.append({"module": part.name,
                              "reason": f"traced, nothing prunable ({why})"})
    split.parts = keep


def merged_plan(results: dict[str, Result], o: CompressOptions) -> Plan:
    plan = Plan(meta={"backend": "fx-parts", "method": o.method, "seed": o.seed,
                      "target": o.target, "parts": {n: r.plan.meta for n, r in results.items()}})
    for name, r in results.items():
        plan.remove.update({f"{name}{SEP}{k}": v for k, v in r.plan.remove.items()})
        plan.units.update({f"{name}{SEP}{k}": v for k, v in r.plan.units.items()})
        plan.bypass += [f"{name}{SEP}{b}" for b in r.plan.bypass]
    return plan


def _report(split, results: dict[str, Result], out, example_inputs, o) -> Report:
    flops_after, params_after = torch_parts.counts(out, example_inputs)
    reps = [r.report for r in results.values()]
    reached = all(r.reached for r in reps) and all(
        ratio is None or after <= ratio * before * 1.001 + 0.5 for ratio, before, after in (
            (o.flops, split.flops, flops_after), (o.params, split.params, params_after)))
    frozen = [{**f, "layer": f"{n}{SEP}{f['layer']}"} for n, r in results.items()
              for f in r.report.frozen]
    frozen += [{"layer": s["module"], "source": "module", "role": "all", "channels": 0,
                "reason": s["reason"] if s["reason"].startswith("traced") else
                f"not traced: {s['reason']}"} for s in split.skipped]
    warnings = list(dict.fromkeys(w for r in reps for w in r.warnings))
    parts = [{"module": p.name, "flops_before": r.report.flops_before,
              "flops_after": r.report.flops_after, "params_before": r.report.params_before,
              "params_after": r.report.params_after, "reached": r.report.reached,
              "share_of_flops": round(p.flops / max(split.flops, 1), 4)}
             for p, r in zip(split.parts, results.values())]
    return Report(
        backend="fx-parts", flops_before=split.flops, flops_after=flops_after,
        params_before=split.params, params_after=params_after, target=o.target, reached=reached,
        method=o.method, groups=sum(r.groups for r in reps),
        groups_pruned=sum(r.groups_pruned for r in reps),
        units_removed=sum(r.units_removed for r in reps), frozen=frozen, warnings=warnings,
        calibration=reps[0].calibration, round_to=o.round_to, keep=o.keep,
        heal={n: r.report.heal for n, r in results.items()},
        blocks_bypassed=[f"{n}{SEP}{b}" for n, r in results.items()
                         for b in r.report.blocks_bypassed],
        layers=[{**L, "part": n} for n, r in results.items() for L in r.report.layers],
        parts=parts)


def apply(model, plan: Plan, example_inputs, mode: str, applied):
    """A merged plan (:func:`merged_plan`) applied to ``model`` part by part:
    ``applied(module, plan, args, mode)`` emits one part (``idapgraph.apply_plan``)."""
    split = torch_parts.split(model, example_inputs)
    found = {p.name: p for p in split.parts}
    named = plan.meta.get("parts", {})
    if not named or set(named) - set(found):
        raise InputError(f"the plan's parts {sorted(set(named) - set(found)) or '(none)'} are "
                         f"not traceable parts of this model (found: {sorted(found)})")
    replaced = {}
    for name, meta in named.items():
        cut = len(name) + len(SEP)
        sub = Plan(remove={k[cut:]: v for k, v in plan.remove.items()
                           if k.startswith(name + SEP)},
                   units={k[cut:]: v for k, v in plan.units.items() if k.startswith(name + SEP)},
                   meta=dict(meta), bypass=[b[cut:] for b in plan.bypass
                                            if b.startswith(name + SEP)])
        replaced[name] = applied(found[name].module, sub, found[name].args, mode)
    out = torch_parts.assemble(model, replaced)
    if mode == "remove":
        torch_parts.check(model, out, example_inputs)
    return out
