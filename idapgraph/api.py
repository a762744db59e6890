"""The public Python API: ``compress``, ``analyze``, ``apply_plan``.

This module wires frontends, passes and emitters together; it holds no op semantics.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError
from .ir.annotations import Coupling
from .ir.graph import Graph
from .ir.plan import Plan, Rewrite
from .passes import coupling as coupling_pass
from .passes import cost as cost_pass
from .passes import prune as prune_pass
from .passes import scoring, select as select_pass


class Model:
    """A loaded model of either backend: its IR plus the means to emit and validate."""

    backend: str
    graph: Graph
    source: Any  # fx GraphModule or normalised ModelProto

    def emit(self, rewrite: Rewrite, mode: str = "remove") -> Any:
        raise NotImplementedError

    def validate(self, model: Any) -> None:
        raise NotImplementedError


class TorchModel(Model):
    backend = "fx"

    def __init__(self, module, example_inputs) -> None:
        import torch

        from .frontends import fx as fx_frontend

        if example_inputs is None:
            raise InputError("example_inputs are required for a torch module")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.example_inputs = tuple(example_inputs)
        module.eval()
        self.source = fx_frontend.trace(module, self.example_inputs)
        self.graph = fx_frontend.to_ir(self.source)
        self.output_shapes = [self.graph.shape(t) for t in self.graph.outputs]

    def emit(self, rewrite: Rewrite, mode: str = "remove"):
        from .emit import fx as fx_emit

        return fx_emit.emit(self.source, self.graph, rewrite, mode)

    def validate(self, model) -> None:
        from .emit.validate import check_fx

        check_fx(model, self.example_inputs, self.output_shapes)


class OnnxModel(Model):
    backend = "onnx"

    def __init__(self, model) -> None:
        from .frontends import onnx as onnx_frontend
        from .frontends import onnx_file

        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            model = onnx_file.load(model)
        else:
            self.path = None
        self.original = model
        self.source = onnx_frontend.normalize(model)
        self.graph = onnx_frontend.to_ir(self.source)
        self.output_shapes = None

    def emit(self, rewrite: Rewrite, mode: str = "remove"):
        from .emit import onnx as onnx_emit

        return onnx_emit.emit(self.source, self.graph, rewrite, mode)

    def validate(self, model) -> None:
        from .emit.validate import check_onnx, example_feeds, run_onnx

        if self.output_shapes is None:
            self.output_shapes = [o.shape for o in run_onnx(self.source, example_feeds(self.source))]
        check_onnx(model, self.output_shapes)


def load(model, example_inputs=None) -> Model:
    """Wrap a torch module, an ``onnx.ModelProto`` or a path to an ONNX file."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return OnnxModel(model)
    try:
        import onnx

        if isinstance(model, onnx.ModelProto):
            return OnnxModel(model)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return TorchModel(model, example_inputs)
    except ImportError:  # pragma: no cover
        pass
    raise InputError(f"cannot compress a {type(model).__name__}: pass a torch nn.Module, "
                     "an onnx.ModelProto or a path to an .onnx file")


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


@dataclass
class Analysis:
    model: Model
    coupling: Coupling
    cost: cost_pass.Cost

    @property
    def graph(self) -> Graph:
        return self.model.graph


def analyze(model, example_inputs=None) -> Analysis:
    """Trace/load ``model`` and run coupling and cost analysis."""
    m = load(model, example_inputs)
    return Analysis(m, coupling_pass.analyze(m.graph), cost_pass.count(m.graph))


def _check_ratio(name: str, r: float | None) -> None:
    if r is None:
        return
    if not isinstance(r, (int, float)) or not (0 < r <= 1):
        raise InputError(f"{name} must be a fraction to keep in (0, 1], got {r!r}")


def compress(model, example_inputs=None, *, flops: float | None = None, params: float | None = None,
             method: str = "magnitude", calib=None, seed: int = 0, plan: Plan | None = None,
             min_keep: float = 0.1) -> Result:
    """Compress ``model`` to ``flops``/``params`` (fractions of the original to keep).

    Returns a :class:`Result` whose ``model`` is of the same kind as the input (an fx
    GraphModule for a torch module, an ``onnx.ModelProto`` for ONNX). ``plan`` applies a given
    plan instead of selecting one. ``calib`` is accepted for API stability; the baseline methods
    here do not read activations.
    """
    _check_ratio("flops", flops)
    _check_ratio("params", params)
    if method not in scoring.METHODS:
        raise InputError(f"unknown method {method!r} (choose from {', '.join(scoring.METHODS)})")
    if plan is None and flops is None and params is None:
        raise InputError("give a target: flops=R and/or params=R")
    a = analyze(model, example_inputs)
    g, coupling = a.graph, a.coupling
    warn: list[str] = []
    reached = True
    if plan is None:
        scores = scoring.score(method, g, coupling, seed=seed)
        sel = select_pass.select(g, coupling, scores, flops=flops, params=params, min_keep=min_keep)
        plan, reached = sel.plan, sel.reached
        if not reached:
            msg = (f"target not reachable: frozen channels and the per-group minimum "
                   f"({min_keep:.0%}) leave FLOPs at {sel.flops / max(a.cost.flops, 1):.3f} "
                   f"and params at {sel.params / max(a.cost.params, 1):.3f} of the original")
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
    plan.meta.update({"backend": g.backend, "method": method, "seed": seed,
                      "target": {"flops": flops, "params": params}})
    try:
        rewrite = prune_pass.resolve(g, coupling, plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None
    out = a.model.emit(rewrite, "remove")
    a.model.validate(out)
    after = cost_pass.count(g, lambda t: rewrite.new_shapes[t])
    report = Report(
        backend=g.backend, flops_before=a.cost.flops, flops_after=after.flops,
        params_before=a.cost.params, params_after=after.params,
        target={"flops": flops, "params": params}, reached=reached, method=method,
        groups=len(coupling.groups), groups_pruned=sum(1 for v in plan.remove.values() if v),
        units_removed=plan.n_removed,
        frozen=[asdict(f) for f in coupling.frozen], warnings=warn)
    return Result(model=out, plan=plan, report=report)


def apply_plan(model, plan: Plan, example_inputs=None, mode: str = "remove"):
    """Apply ``plan`` to ``model`` and return the emitted model (``mode="zero"`` zeroes the
    planned channels instead of removing them: the reference for equivalence checks)."""
    a = analyze(model, example_inputs)
    try:
        rewrite = prune_pass.resolve(a.graph, a.coupling, plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None
    out = a.model.emit(rewrite, mode)
    if mode == "remove":
        a.model.validate(out)
    return out
