"""What ``compress`` returns: the compressed model, its plan and the report (the same dict the
CLI prints as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .ir.plan import Plan


@dataclass
class Report:
    backend: str
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    target: dict[str, float | None]
    reached: bool
    method: str
    groups: int
    groups_pruned: int
    units_removed: int
    frozen: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = "none"  # "data", "random" (no data given) or "none" (not needed)
    steps: list[dict[str, Any]] = field(default_factory=list)  # per pruning step
    # groups ranked last: calibration output error of their smallest cut (stages.select.guard)
    protected: dict[str, float] = field(default_factory=dict)
    # measure_groups with FLOPs/params targets, per round: group -> kept count -> measured
    # output error (of the model the rounds before left)
    group_losses: list[dict[str, dict[str, float]]] | None = None
    # ... and which units of a group went first there: "auto", "obs" or "scores" (None: not
    # measured)
    order: str | None = None
    heal: dict[str, Any] = field(default_factory=dict)  # healing summary (HealReport)
    blocks_bypassed: list[str] = field(default_factory=list)  # stage 2, in removal order
    block_scores: dict[str, float] = field(default_factory=dict)  # score of each when removed
    # elements of the mean-substitution constants stage 2 stored (included in params_after)
    params_constants: int = 0
    round_to: int | None = None  # None: the kernel-friendly default (multiples of 8 channels)
    keep: list[str] = field(default_factory=list)  # --keep patterns
    kept_nodes: list[str] = field(default_factory=list)  # IR nodes they matched
    layers: list[dict[str, Any]] = field(default_factory=list)  # changed conv/linear layers
    # with finetune/evaluate: one entry per step (see idapgraph.pipeline)
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    # with latency=R: the measured budget, the solver's rounds, the table (latency_target)
    latency_target: dict[str, Any] | None = None
    # a torch module traced by parts (stages.parts): each part's module name, cost and share
    parts: list[dict[str, Any]] | None = None

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flops_ratio"] = self.flops_ratio
        d["params_ratio"] = self.params_ratio
        return d


@dataclass
class Result:
    model: Any  # same kind as the input: fx GraphModule or onnx.ModelProto
    plan: Plan
    report: Report
