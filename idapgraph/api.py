"""The public Python API: ``compress``, ``analyze``, ``apply_plan``.

This module wires frontends, passes and emitters together; it holds no op semantics.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InputError
from .frontends import onnx_dims
from .ir.annotations import Coupling
from .ir.graph import Graph
from .ir.plan import Plan, Rewrite
from .passes import coupling as coupling_pass
from .passes import cost as cost_pass
from .passes import prune as prune_pass
from .passes import blocks as blocks_pass
from .passes import reconstruct as recon_pass
from .passes import divergence, scoring
from .passes import heal as heal_pass, select as select_pass
from .passes import keep as keep_pass
from .passes.latency import untimed_note


class Model:
    """A loaded model of either backend: its IR plus the means to emit and validate."""

    backend: str
    graph: Graph
    source: Any  # fx GraphModule or normalised ModelProto

    batch_size: int = 1
    exact_batch: bool = True  # the model only takes batches of exactly ``batch_size``
    progress: Any = None  # progress(stage, done, total) after every calibration batch, or None
    notes: tuple[str, ...] | list[str] = ()  # optional loading steps that failed (warnings)

    def ticking(self, batches):
        """``batches``, reporting each one to :attr:`progress` as it has been run."""
        if self.progress is None:
            return batches
        total = len(batches) if hasattr(batches, "__len__") else None

        def each():
            for i, b in enumerate(batches):
                yield b
                self.progress("calibration", i + 1, total)

        return each()

    def emit(self, rewrite: Rewrite, mode: str = "remove") -> Any:
        raise NotImplementedError

    def validate(self, model: Any) -> None:
        raise NotImplementedError

    def as_onnx(self, model: Any):
        """``model`` (this backend's) as an ``onnx.ModelProto``, for onnxruntime timing."""
        return model

    def input_specs(self) -> list[tuple[str, tuple, str]]:
        """(name, shape, numpy dtype) of every model input."""
        return [(t, self.graph.shape(t), _np_dtype(self.graph.tensors[t].dtype))
                for t in self.graph.inputs]

    def calibration(self, calib, seed: int = 0):
        """Calibration batches in this model's batch size, and whether they are real data.
        Built once per (calib, seed): a one-shot iterable is read only once."""
        from .runners.data import calibration_batches, rebatch

        cache = self.__dict__.setdefault("_calibration", {})
        key = (id(calib), seed)
        if key not in cache:
            batches, real = calibration_batches(calib, self.input_specs(),
                                                n_inputs=len(self.graph.inputs), seed=seed,
                                                batch_size=self.batch_size)
            cache[key] = (calib, rebatch(batches, self.batch_size, self.exact_batch), real)
        return cache[key][1:]

    def reference(self, batches, requests: set[tuple[str, int]]):
        """Channel statistics of ``requests`` and the outputs of the original model on
        ``batches``, each computed once."""
        from .passes.stats import ChannelStats

        stats = self.__dict__.setdefault("_ref_stats", {})
        outs = self.__dict__.setdefault("_ref_outputs", {})
        skey, okey = (id(batches), frozenset(requests)), id(batches)
        if skey not in stats or okey not in outs:
            red = ChannelStats(set(requests))
            got = self.run(self.source, red.tensors, batches, red, outputs=okey not in outs)
            stats[skey] = red
            outs.setdefault(okey, got)
        return stats[skey], outs[okey]

    def output_error(self, batches):
        """``error(model)``: ‖N₀ − N‖² / ‖N₀‖² of a variant of this model on ``batches``."""
        from .passes.heal import OutputError

        _, ref_out = self.reference(batches, set())

        def error(model) -> float:
            e = OutputError()
            for r, o in zip(ref_out, self.run(model, [], batches, None, outputs=True)):
                e.add(r, o)
            return e.value

        return error

    def run(self, model: Any, names: list[str], batches, reduce, outputs: bool = False):
        """Run ``model`` (this one, or an emitted variant of it) on ``batches``."""
        raise NotImplementedError

    def get_param(self, model: Any, name: str):
        raise NotImplementedError

    def can_add_bias(self, model: Any, node: str) -> bool:
        raise NotImplementedError

    def set_params(self, model: Any, updates: dict, new_bias: dict) -> Any:
        raise NotImplementedError

    def bypass(self, model: Any, blocks: list[tuple[str, str, Any]]) -> Any:
        raise NotImplementedError

    def check_runnable(self) -> None:
        """Refuse a model the backend cannot run (nothing to check for torch)."""

    def node_aliases(self) -> dict[str, list[str]]:
        """Other names of IR nodes that ``keep`` patterns may use (none by default)."""
        return {}


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
        from .runners.torch_runner import eval_mode

        eval_mode(module)
        self.source = fx_frontend.trace(module, self.example_inputs)
        self.graph = fx_frontend.to_ir(self.source)
        self.output_shapes = [self.graph.shape(t) for t in self.graph.outputs]
        self.batch_size = self._probe_batch()

    # what torch raises for a module that only runs at the batch it was traced at: a shape or
    # size mismatch (RuntimeError: view/reshape/expand/cat/matmul), a dim out of range
    # (IndexError), sizes a functional rejects (ValueError), a traced ``torch._assert``
    _BATCH_ERRORS = (RuntimeError, ValueError, IndexError, AssertionError)

    def _probe_batch(self, big: int = 32) -> int:
        """Calibrate in batches of ``big`` when a module traced at batch 1 runs at batch 2 with
        every output the traced shape but for a doubled leading dim; else at the example's
        batch. Only what torch raises for a batch the module does not take (``_BATCH_ERRORS``)
        means no: any other exception propagates."""
        import contextlib
        import io

        import torch

        from .emit.validate import flatten_outputs

        first = self.example_inputs[0] if self.example_inputs else None
        own = int(first.shape[0]) if getattr(first, "ndim", 0) else 1
        if own != 1:
            return own
        args = tuple(torch.cat([a] * 2) if isinstance(a, torch.Tensor) and a.ndim else a
                     for a in self.example_inputs)
        try:  # fx prints the failing generated code to stderr itself; a failed probe is expected
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                outs = flatten_outputs(self.source(*args))
        except self._BATCH_ERRORS:
            return own
        want = [(2, *s[1:]) if s and s[0] == 1 else None for s in self.output_shapes]
        got = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in outs]
        if len(got) == len(want) and all(w is not None and g == w for g, w in zip(got, want)):
            self.exact_batch = False
            return big
        return own

    def run(self, model, names, batches, reduce, outputs=False):
        from .runners import torch_runner

        return torch_runner.run(model, names, self.ticking(batches), reduce, outputs)

    def get_param(self, model, name):
        from .emit.fx import get_param

        return get_param(model, name)

    def can_add_bias(self, model, node):
        from .emit.fx import can_add_bias

        return can_add_bias(model, node)

    def set_params(self, model, updates, new_bias):
        from .emit.fx import set_params

        return set_params(model, updates, new_bias)

    def bypass(self, model, blocks):
        from .emit.fx import bypass

        return bypass(model, blocks)

    def node_aliases(self):
        """The module path of every ``call_module`` node (``layer1.0.conv1``)."""
        return {n.name: [str(n.handle.target)] for n in self.graph
                if getattr(n.handle, "op", None) == "call_module"}

    def taylor(self, model, params: list[str], batches, loss=None):
        from .runners import torch_runner

        return torch_runner.taylor_importance(model, params, batches, loss)

    def as_onnx(self, model):
        """The module exported by torch's TorchScript exporter (opset 17), for timing."""
        import io
        import warnings as _w

        import onnx
        import torch

        buf = io.BytesIO()
        with _w.catch_warnings(), torch.no_grad():
            _w.simplefilter("ignore")
            torch.onnx.export(model, self.example_inputs, buf, dynamo=False, opset_version=17)
        return onnx.load_from_string(buf.getvalue())

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
            from .frontends.onnx_external import external_tensors

            if any(not os.path.isabs(e.value) for t in external_tensors(model)
                   for e in t.external_data if e.key == "location"):
                raise InputError("this ModelProto refers to external data files: pass the "
                                 "model's path instead (its data is then read from its folder)")
        self.original = model
        self.notes = []
        self.source = onnx_frontend.normalize(model, self.notes)
        onnx_frontend.check_runnable(self.source)
        self.graph = onnx_frontend.to_ir(self.source)
        self.output_shapes = None
        dims = {self.graph.shape(t)[0] for t in self.graph.inputs if self.graph.shape(t)}
        static = len(dims) == 1 and None not in dims
        self.batch_size = dims.pop() if static else 8
        self.exact_batch = static

    def run(self, model, names, batches, reduce, outputs=False):
        from .runners import onnx_runner

        return onnx_runner.run(model, names, self.ticking(batches), reduce, outputs)

    def get_param(self, model, name):
        from .emit.onnx import get_param

        return get_param(model, name)

    def can_add_bias(self, model, node):
        from .emit.onnx import can_add_bias

        return can_add_bias(self.graph, node)

    def set_params(self, model, updates, new_bias):
        from .emit.onnx import set_params

        return set_params(model, self.graph, updates, new_bias)

    def bypass(self, model, blocks):
        from .emit.onnx import bypass

        return bypass(model, blocks)

    def emit(self, rewrite: Rewrite, mode: str = "remove"):
        from .emit import onnx as onnx_emit

        return onnx_emit.emit(self.source, self.graph, rewrite, mode)

    def check_runnable(self) -> None:
        """Refuse (bad input) a model onnxruntime cannot run: its outputs could not be checked."""
        from .runners.ort_ops import check_runnable

        check_runnable(self.original)

    def validate(self, model) -> None:
        from .emit.validate import check_onnx, example_feeds, run_onnx

        if self.output_shapes is None:
            self.output_shapes = [o.shape for o in run_onnx(self.source, example_feeds(self.source))]
        check_onnx(model, self.output_shapes)


def _np_dtype(dtype: str) -> str:
    d = dtype.replace("torch.", "")
    return {"float": "float32", "bool": "bool_", "": "float32"}.get(d, d)


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
    calibration: str = "none"  # "data", "random" (no data given) or "none" (not needed)
    steps: list[dict[str, Any]] = field(default_factory=list)  # per pruning step
    heal: dict[str, Any] = field(default_factory=dict)  # healing summary (HealReport)
    blocks_bypassed: list[str] = field(default_factory=list)  # stage 2, in removal order
    block_scores: dict[str, float] = field(default_factory=dict)  # score of each when removed
    # elements of the mean-substitution constants stage 2 stored (included in params_after)
    params_constants: int = 0
    round_to: int = 1
    keep: list[str] = field(default_factory=list)  # --keep patterns
    kept_nodes: list[str] = field(default_factory=list)  # IR nodes they matched
    layers: list[dict[str, Any]] = field(default_factory=list)  # changed conv/linear layers
    # with finetune/evaluate: one entry per step (see idapgraph.pipeline)
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    # with latency=R: the measured budget, the solver's rounds, the table (latency_target)
    latency_target: dict[str, Any] | None = None

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
    divergence: dict[str, Any] | None = None  # layer -> δ per output channel (with calib)
    group_scores: dict[str, Any] | None = None  # group key -> idap unit scores (with calib)
    calibration: str = "none"

    @property
    def blocks(self) -> list:
        """Bypassable blocks (:class:`idapgraph.passes.blocks.Block`), found on first use."""
        if "_blocks" not in self.__dict__:
            self.__dict__["_blocks"] = blocks_pass.find(self.graph)
        return self.__dict__["_blocks"]

    @property
    def graph(self) -> Graph:
        return self.model.graph

    @property
    def warnings(self) -> list[str]:
        """Loading steps that failed and were skipped (the analysis may be less sharp)."""
        return list(self.model.notes)


@contextlib.contextmanager
def _gc_paused():
    """Loading and coupling build ~10^6 small objects that hold no garbage cycles; the cyclic
    collector's repeated full passes over them made analysis time grow faster than the graph
    (measured: 5.4x the time for 4x the nodes with it, 4.7x without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def analyze(model, example_inputs=None, *, calib=None, divergence_scores: bool = False,
            seed: int = 0) -> Analysis:
    """Trace/load ``model`` and run coupling and cost analysis; with ``calib`` (or
    ``divergence_scores=True``, then on seeded random inputs) also the IDAP++ divergence
    annotation: δ per output channel of every weighted layer and per unit of every group."""
    with _gc_paused():
        m = load(model, example_inputs)
        a = Analysis(m, coupling_pass.analyze(m.graph), cost_pass.count(m.graph))
    if calib is not None or divergence_scores:
        batches, real = m.calibration(calib, seed)
        a.calibration = "data" if real else "random"
        used, norms = divergence.requests(a.graph, a.coupling)
        m.run(m.source, norms.tensors, batches, norms)
        scores, per_node = divergence.scores(a.graph, a.coupling, used, norms)
        a.divergence = per_node
        a.group_scores = {g.key: s for g, s in zip(a.coupling.groups, scores)}
    return a


def latency(model, *, runs: int = 20, warmup: int = 5, threads: int = 1,
            provider: str = "cpu", dims: dict | None = None) -> dict[str, Any]:
    """onnxruntime latency of an ONNX model (path or ``ModelProto``) on seeded random inputs
    (symbolic dims at 1, or at their ``dims`` sizes): ``threads`` intra-op threads, ``warmup``
    untimed runs, then the median/min/max of ``runs`` timed ones, in milliseconds.
    ``provider``: ``cpu`` (default) or ``cuda`` (onnxruntime-gpu; inputs and outputs kept on
    the GPU)."""
    from .runners.bench import latency as ort_latency
    from .runners.providers import resolve

    if runs < 1 or warmup < 0 or threads < 1:
        raise InputError("need runs >= 1, warmup >= 0 and threads >= 1")
    provider = resolve(provider)
    if isinstance(model, (str, os.PathLike)):
        from .frontends import onnx_file

        model = onnx_file.load(model)
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise InputError("latency is measured on ONNX models (a path or an onnx.ModelProto)")
    if dims:
        model = onnx_dims.fixed(model, onnx_dims.check(model, dict(dims)))
    return ort_latency(model, runs=runs, warmup=warmup, threads=threads,
                       provider=provider).to_dict()


def profile(model, example_inputs=None, *, threads: int = 1, refresh: bool = False,
            min_keep: float = 0.1, round_to: int = 1, progress=None,
            table_path=None, provider: str = "cpu", dims: dict | None = None) -> dict[str, Any]:
    """Build (or, with ``refresh``, re-time) the onnxruntime latency tables ``latency=R`` reads
    for ``model``'s conv/linear layers at every channel count the selection may choose, cached
    on disk per machine, execution provider (``cpu`` or ``cuda``) and thread count
    (``$IDAPGRAPH_CACHE``, default ``~/.cache/idapgraph``), and time the whole model. ``dims``
    (symbolic dim name -> size, ONNX only): the sizes to time those dims at, as ``compress``
    would (default 1). Returns what was timed, reused and measured."""
    from . import latency_target
    from .runners.providers import resolve

    _check_threads(threads)
    provider = resolve(provider)
    if not 0 <= min_keep < 1:
        raise InputError(f"min_keep must be in [0, 1), got {min_keep!r}")
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    timed = _timing_analysis(a, dims)
    table = latency_target.table_for(threads, table_path, provider)
    lm, info = latency_target.latency_model(timed, timed.blocks, table, min_keep=min_keep,
                                            **latency_target.grid(round_to), progress=progress,
                                            refresh=refresh)
    measured = latency_target.measure(onnx_dims.fixed(a.model.as_onnx(a.model.source), dims),
                                      threads, provider=provider)
    tables_ms, _ = lm.raw(lm.full_choice())
    layers = sum(len(t.nodes) for t in lm.terms if t.kind == "lut")
    note = untimed_note(table)
    return {**info, "layers": layers, "model_ms": round(measured, 4),
            "tables_ms": round(tables_ms, 4), "threads": threads, "machine": table.machine,
            "dims": dict(dims or {}), "untimed": lm.untimed, "untimed_layers": lm.untimed_layers,
            "warnings": [note] if note else []}


def _check_threads(threads) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")


def _timing_analysis(a: Analysis, dims, keep_nodes=frozenset()) -> Analysis:
    """The analysis latency is modelled and timed on: ``a`` itself without ``dims``; with them
    (symbolic dim name -> size, ONNX only) the analysis of ``a``'s model with those dims fixed,
    which must find every channel group (same key, same units) and block of ``a``, and keeps
    only those (``keep_nodes`` protected alike). Fixed sizes can let it find more: a dynamo
    export of BERT with its sequence fixed also offers groups on sliced position-id
    constants."""
    if not dims:
        return a
    if a.graph.backend != "onnx":
        raise InputError("dims fixes symbolic dims of an ONNX model's inputs; a torch module is "
                         "traced at the shapes of its example inputs")
    dims = onnx_dims.check(a.model.source, dict(dims))
    t = analyze(onnx_dims.fixed(a.model.source, dims))
    if keep_nodes:
        t.coupling = keep_pass.protect(t.graph, t.coupling, set(keep_nodes))
    groups = {g.key: g for g in t.coupling.groups}
    if any(g.key not in groups or groups[g.key].n_units != g.n_units for g in a.coupling.groups) \
            or not {b.key for b in a.blocks} <= {b.key for b in t.blocks}:
        raise InputError(f"dims: with {dims} fixed the model's channel groups or blocks differ "
                         "from those with its dims symbolic; drop dims to time it at size 1")
    t.coupling = replace(t.coupling, groups=[groups[g.key] for g in a.coupling.groups])
    keys = {b.key for b in a.blocks}
    t.__dict__["_blocks"] = [b for b in t.blocks if b.key in keys]
    return t


def _check_ratio(name: str, r: float | None) -> None:
    if r is None:
        return
    if not isinstance(r, (int, float)) or not (0 < r <= 1):
        raise InputError(f"{name} must be a fraction to keep in (0, 1], got {r!r}")


def _scoring_data(a: Analysis, method: str, calib, seed: int, warn: list[str]):
    """Calibration batches for ``method`` (None when it needs none) and their kind."""
    if method not in scoring.NEEDS_DATA:
        return None, "none"
    batches, real = a.model.calibration(calib, seed)
    if not real:
        msg = (f"no calibration data: {method} scores use seeded standard-normal inputs and "
               "are weaker; pass calib= (API) or --calib FILE.npz (CLI)")
        warn.append(msg)
        warnings.warn(msg, stacklevel=4)
    return batches, "data" if real else "random"


def _scores(a: Analysis, method: str, batches, loss, seed: int, current=None) -> list[np.ndarray]:
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
    current = a.model.source if current is None else current
    used, _ = divergence.requests(g, coupling)
    norms = heal_pass.ChannelStats({(tp.tensor, tp.axis) for tp in used.values()})
    a.model.run(current, norms.tensors, batches, norms)
    scores, _ = divergence.scores(g, coupling, used, norms,
                                  lambda n, c=current: a.model.get_param(c, n))
    return scores


def _select_plan(a: Analysis, method: str, *, flops, params, calib, seed, min_keep, steps,
                 alpha, base, loss, warn: list[str], log: list[dict], round_to: int = 1,
                 progress=None):
    """Scores + selection. ``idap`` runs the iterative schedule with re-scoring; the others
    select in one shot. Returns (plan, reached, calibration kind)."""
    g, coupling = a.graph, a.coupling
    kind = "none"
    if (flops is None or flops >= 1) and (params is None or params >= 1):  # identity: no scoring
        return select_pass.select(g, coupling, [np.zeros(gr.n_units) for gr in coupling.groups],
                                  flops=flops, params=params), kind
    batches, kind = _scoring_data(a, method, calib, seed, warn)
    target = {"flops": flops, "params": params, "min_keep": min_keep, "round_to": round_to}
    if method != "idap":
        sel = select_pass.select(g, coupling, _scores(a, method, batches, loss, seed), **target)
    else:  # idap: p_t = base·(1 + t/T)^alpha of what remains, re-scored after every step
        sel = None
        plan = Plan(meta={"backend": g.backend})
        for t in range(10_000):
            rewrite = prune_pass.resolve(g, coupling, plan)
            current = a.model.source
            if plan.remove:  # re-score on the masked model, healed so activations are realistic
                current, _ = _heal(a, a.model.emit(rewrite, "zero"), None, batches)
            scores = _scores(a, method, batches, loss, seed, current)
            remaining = sum(gr.n_units - len(plan.remove.get(gr.key, ())) for gr in coupling.groups)
            frac = select_pass.schedule_fraction(t, base=base, steps=steps, alpha=alpha)
            sel = select_pass.select(g, coupling, scores, removed=plan,
                                     max_new=max(1, math.ceil(frac * remaining)), **target)
            added = sel.plan.n_removed - plan.n_removed
            plan = sel.plan
            log.append({"step": t, "fraction": round(frac, 4), "removed": added,
                        "flops": sel.flops, "params": sel.params})
            if progress is not None:
                progress("step", t + 1, None)
            if sel.reached or added == 0:
                break
    return sel, kind


def _bypassed(a: Analysis, model, keys: list[str]):
    """``model`` (this analysis' backend) with the blocks ``keys`` bypassed, no mean kept."""
    return _truncate(a, model, None, n_blocks=None, max_error=None, score="relative",
                     mean_substitution=False, plan_bypass=keys)[0]


def _emitted(a: Analysis, plan: Plan):
    """``plan`` applied to the analysed model: channels removed, its blocks bypassed."""
    out = a.model.emit(prune_pass.resolve(a.graph, a.coupling, plan), "remove")
    return _bypassed(a, out, plan.bypass) if plan.bypass else out


def _latency_plan(a: Analysis, method: str, target: float, *, calib, seed, loss, warn, min_keep,
                  round_to, threads, gates, kinds, keep_nodes, solver, progress,
                  gate_error: float, provider: str, dims=None, measure_groups: bool = False):
    """``latency=R`` selection (see :mod:`idapgraph.latency_target`): one-shot scores of
    ``method``, then the MILP over measured tables with closed-loop timing of the candidates.
    Blocks whose bypass alone raises the calibration output error past ``gate_error`` are not
    offered to the solver; the others are priced by that error (:func:`_block_weights`), and
    the ones bypassed together must keep it within ``gate_error`` as well. Latency is
    modelled and timed with the symbolic dims ``dims`` fixed (:func:`_timing_analysis`).
    ``measure_groups``: the groups weigh their measured, healed losses (:func:`_group_losses`)
    and a block its bypass error, one scale for all.
    Returns (plan, latency record, calibration kind)."""
    from . import latency_target

    timed = _timing_analysis(a, dims, keep_nodes)

    batches, kind = _scoring_data(a, method, calib, seed, warn)
    scores = _scores(a, method, batches, loss, seed)
    blocks, gate_errors = [], {}
    if gates:
        blocks = [b for b in a.blocks if (kinds is None or b.kind in kinds)
                  and keep_nodes.isdisjoint(b.nodes)]
    if blocks:  # a block is offered only if bypassing it alone keeps the output error bounded
        if batches is None:
            batches, real = a.model.calibration(calib, seed)
            kind = "data" if real else "random"
        error = a.model.output_error(batches)
        for b in blocks:
            gate_errors[b.key] = error(_bypassed(a, a.model.source, [b.key]))
        blocks = [b for b in blocks if gate_errors[b.key] <= gate_error]
    losses = None
    if measure_groups:
        if batches is None:
            batches, real = a.model.calibration(calib, seed)
            kind = "data" if real else "random"
        losses = _group_losses(a, scores, batches, min_keep, progress)
        weights = {b.key: gate_errors[b.key] for b in blocks} if blocks else None
    else:
        weights = _block_weights(a, scores, gate_errors, error, min_keep) if blocks else None

    # models are emitted from the symbolic analysis and their dims fixed afterwards: emitted
    # from the fixed one, a dynamo export of BERT failed onnxruntime's checks (a Slice's
    # starts and ends)
    held = {b.key: b for b in timed.blocks}
    table = latency_target.table_for(threads, provider=provider)
    plan, info = latency_target.select(
        timed, scores, target=target, threads=threads, blocks=[held[b.key] for b in blocks],
        provider=provider, original=onnx_dims.fixed(a.model.as_onnx(a.model.source), dims),
        realize=lambda p: onnx_dims.fixed(a.model.as_onnx(_emitted(a, p)), dims),
        min_keep=min_keep, table=table,
        block_weights=weights, group_losses=losses, **latency_target.grid(round_to),
        solver=solver, progress=progress, block_errors=gate_errors if blocks else None,
        max_error=gate_error,
        bypass_error=(lambda keys: error(_bypassed(a, a.model.source, keys))) if blocks else None)
    info["dims"] = dict(dims or {})
    info["group_losses"] = None if losses is None else \
        {g.key: {str(k): round(v, 6) for k, v in ls.items()}
         for g, ls in zip(a.coupling.groups, losses)}
    info["gate_errors"] = {k: round(float(v), 6) for k, v in gate_errors.items()}
    info["gate_error"] = gate_error
    for note in info["notes"] + ([untimed_note(table)] if table.failed else []):  # untimed layers
        warn.append(note)
        warnings.warn(note, stacklevel=3)
    return plan, info, kind


# the shares of a group's units kept when its loss is measured (see _group_losses)
LOSS_KEEPS = (0.25, 0.5, 0.75)


def _group_losses(a: Analysis, scores, batches, min_keep: float,
                  progress=None) -> list[dict[int, float]]:
    """Per group: kept count -> calibration output error of keeping only that many of its
    highest-scoring units, the rest removed and healed by least squares (every other group
    whole), at the shares ``LOSS_KEEPS``: one scale for every group and for the blocks' bypass
    errors (:func:`idapgraph.passes.latency.measured_importance`). Unit scores are comparable
    within a group only, so without it the solver weighs a group by its unit count. Costs a
    healed model per measurement (MNIST CNN: 27 in about 20 s). On the MNIST CNN with pinned
    tables, plans for predicted latencies 0.7 to 0.4 scored 94.4-96.9 % top-1 after
    least-squares healing, the unit-count weighting 80.5-95.5 %; measured without healing
    (masked), the losses saturate and did worse."""
    out = []
    for i, (g, s) in enumerate(zip(a.coupling.groups, scores)):
        lo, got = select_pass.min_kept(g.n_units, min_keep), {}
        order = np.argsort(s, kind="stable")
        for share in LOSS_KEEPS:
            k = max(lo, int(round(share * g.n_units)))
            if k < g.n_units and k not in got:
                cut = Plan(remove={g.key: sorted(int(u) for u in order[:g.n_units - k])},
                           meta={"backend": a.graph.backend})
                rewrite = prune_pass.resolve(a.graph, a.coupling, cut)
                _, rep = _heal(a, a.model.emit(rewrite, "remove"), rewrite, batches, mode="lsq")
                # the error of the model healing keeps (healed, or not where that is worse)
                got[k] = float(min(rep.error_before, rep.error_after))
        out.append(got)
        if progress is not None:
            progress("group losses", i + 1, len(scores))
    return out


def _block_weights(a: Analysis, scores, block_errors: dict[str, float], error, min_keep: float):
    """Each block's importance on the scale of the groups' importance
    (:func:`idapgraph.passes.latency.kept_importance`), from measured calibration output
    errors: removing the lower-scoring half of every group (masked) costs ``E`` for ``S`` of
    that importance, so a block whose bypass alone costs ``e`` weighs ``e·S/E``. None when that
    calibration gives no scale (then a bypass costs its own groups' units)."""
    from .passes.latency import kept_importance

    remove, lost = {}, 0.0
    for g, s in zip(a.coupling.groups, scores):
        k = g.n_units - max(select_pass.min_kept(g.n_units, min_keep), -(-g.n_units // 2))
        if k > 0:
            order = np.argsort(s, kind="stable")[:k]
            remove[g.key] = sorted(int(u) for u in order)
            whole, half = kept_importance(s, [g.n_units, g.n_units - k])
            lost += float(whole - half)
    if not remove or lost <= 0:
        return None
    half = Plan(remove=remove, meta={"backend": a.graph.backend})
    e = error(a.model.emit(prune_pass.resolve(a.graph, a.coupling, half), "zero"))
    if not e > 0:
        return None
    return {k: v * lost / e for k, v in block_errors.items()}


def _heal(a: Analysis, pruned, rewrite: Rewrite | None, batches, chunks: int = 8,
          mode: str = "stats"):
    """``mode="stats"``: statistics matching; ``mode="bias"``: bias compensation (see
    :mod:`idapgraph.passes.heal`). Keeps the better of healed and unhealed by output error on the
    calibration data. ``rewrite=None``: ``pruned`` is a masked (zeroed, same-shape) model."""
    g, m = a.graph, a.model
    rep = heal_pass.HealReport(method=mode)
    if mode == "lsq":
        return _reconstruct(a, pruned, rewrite, batches, rep)
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
        current = _set_params(a, current, updates, new_bias, rep)
        rep.corrections += records
        rep.notes.append(f"bias compensation on {len(comp)} layers")
    scales = []
    for chunk in heal_pass.chunks(sites, chunks):
        cur = heal_pass.ChannelStats({(s.tensor, s.axis) for s in chunk})
        m.run(current, cur.tensors, batches, cur)
        corr = heal_pass.corrections(chunk, ref, cur)
        updates, new_bias = heal_pass.affine_updates(
            corr, lambda n, c=current: m.get_param(c, n), lambda n, c=current: m.can_add_bias(c, n))
        current = _set_params(a, current, updates, new_bias, rep)
        rep.layers += len(corr)
        rep.corrections += [heal_pass.affine_record(c) for c in corr]
        scales.extend(float(x) for c in corr for x in (c.scale.min(), c.scale.max()))
    if scales:
        rep.scale_min, rep.scale_max = min(scales), max(scales)
    rep.error_after = error(current)
    rep.kept = rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def _reconstruct(a: Analysis, pruned, rewrite: Rewrite, batches, rep, per_pass: int = 1):
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
        current = _set_params(a, current, updates, new_bias, rep)
    rep.layers = len(gains)
    if gains:
        rep.notes.append("least-squares refit of %d layers: residual %.3g -> %.3g (median)" % (
            len(gains), float(np.median([x for x, _ in gains])),
            float(np.median([y for _, y in gains]))))
    rep.error_after = error(current)
    rep.kept = rep.error_after <= rep.error_before
    return (current if rep.kept else pruned), rep


def _set_params(a: Analysis, current, updates: dict, new_bias: dict, rep):
    """Apply healing's parameter updates; a new bias a BatchNorm can absorb goes into its
    running mean instead (:func:`passes.heal.absorb_shifts`), the others are recorded in
    ``rep.bias_added`` (the report counts them)."""
    if new_bias:
        means, new_bias = heal_pass.absorb_shifts(a.graph, new_bias,
                                                  lambda n: a.model.get_param(current, n))
        updates = {**updates, **means}
    rep.bias_added.update({k: int(np.size(v)) for k, v in new_bias.items()})
    return a.model.set_params(current, updates, new_bias) if updates or new_bias else current


def _live(alias: dict[str, str], tensor: str) -> str:
    """``tensor``, or what replaced it: the output of an add removed by a bypass without a
    constant no longer exists, its skip input took its place (followed through chains)."""
    while tensor in alias:
        tensor = alias[tensor]
    return tensor


def _bypass_arg(g: Graph, b, const, alias: dict[str, str]) -> tuple:
    """``(add, skip, const)`` for the emitters' ``bypass``, with the skip of a chained block
    (``y2 = y1 + f2(y1)`` after ``y1 = x + f1(x)`` was bypassed) read where it lives now;
    records what replaces ``b``'s own add."""
    skip = _live(alias, b.skip)
    if const is None:
        alias[g.nodes[b.add].outputs[0]] = skip
    return b.add, skip, const


def _truncate(a: Analysis, current, batches, *, n_blocks: int | None, max_error: float | None,
              score: str, mean_substitution: bool, plan_bypass: list[str] | None = None,
              kinds=None, keep_nodes: set[str] = frozenset(), sized: bool = False):
    """Stage 2: bypass the blocks with the smallest score one at a time, re-measuring after each,
    while the calibration output error stays within ``max_error`` or until ``n_blocks`` are gone.
    With ``plan_bypass`` the given blocks are bypassed (no data needed, no mean substitution).
    ``sized``: a params target is set, so a stored mean is never larger than its branch.
    ``kinds`` limits the candidates (see :data:`passes.blocks.BLOCK_KINDS`)."""
    g, m = a.graph, a.model
    blist = blocks_pass.find(g)
    by_key = {b.key: b for b in blist}
    if kinds is not None:
        blist = [b for b in blist if b.kind in kinds]
    blist = [b for b in blist if keep_nodes.isdisjoint(b.nodes)]
    if plan_bypass is not None:
        missing = [k for k in plan_bypass if k not in by_key]
        if missing:
            raise InputError(f"plan bypasses block(s) {missing}, which this model does not have")
        kept = [k for k in plan_bypass if not keep_nodes.isdisjoint(by_key[k].nodes)]
        if kept:
            raise InputError(f"plan bypasses block(s) {kept}, which hold nodes kept by --keep")
        chosen: list = []  # a block inside a bypassed layer goes with it
        for b in sorted((by_key[k] for k in plan_bypass), key=lambda b: -len(b.nodes)):
            if not any(b.overlaps(c) for c in chosen):
                chosen.append(b)
        chosen.sort(key=lambda b: plan_bypass.index(b.key))
        alias: dict[str, str] = {}
        args = [_bypass_arg(g, b, None, alias) for b in chosen]
        out = m.bypass(current, args) if chosen else current
        return out, [b.key for b in chosen], {n for b in chosen for n in b.nodes}, {}, 0
    error = m.output_error(batches)
    removed, nodes, scores, alias, stored = [], set(), {}, {}, 0
    while blist and (n_blocks is None or len(removed) < n_blocks):
        blist = [replace(x, skip=_live(alias, x.skip)) for x in blist]
        norms = blocks_pass.BlockNorms(blist)
        m.run(current, norms.tensors, batches, norms)
        b = min(blist, key=lambda x: norms.score(x.key, score))
        # healing: the branch's mean output as a constant -- no larger than the branch under a
        # params target (blocks.fit_mean), per position otherwise where shapes allow -- or no
        # constant, whichever gives the lowest calibration output error
        consts: list = []
        mean = norms.mean(b.key) if mean_substitution else None
        if mean is not None:
            budget = blocks_pass.branch_params(g, b)
            for cap in (budget, math.inf if not sized else budget):
                c = blocks_pass.fit_mean(mean, g.shape(b.branch), cap)
                if not any(np.shape(c) == np.shape(x) for x in consts):
                    consts.append(c)
        best = None
        for const in consts + [None]:
            trial = dict(alias)  # only the chosen variant's alias is kept
            cand = m.bypass(current, [_bypass_arg(g, b, const, trial)])
            err = error(cand) if max_error is not None or len(consts) else None
            if best is None or (err is not None and err < best[0]):
                best = (err, const, cand, trial)
        err, const, candidate, trial = best
        if max_error is not None and err > max_error:
            break
        scores[b.key] = norms.score(b.key, score)
        current, alias = candidate, trial
        stored += 0 if const is None else int(np.size(const))  # the mean is a stored tensor
        removed.append(b.key)
        nodes |= set(b.nodes)
        blist = [x for x in blist if not x.overlaps(b)]
    return current, removed, nodes, scores, stored


def compress(model, example_inputs=None, *, flops: float | None = None, params: float | None = None,
             method: str = "idap", calib=None, seed: int = 0, plan: Plan | None = None,
             min_keep: float = 0.1, steps: int = 10, alpha: float = 1.5, base: float = 1.0,
             loss=None, heal: str = "lsq", blocks: int | None = 0,
             max_error: float | None = None, block_score: str = "relative",
             block_kinds=None, round_to: int = 1, keep=None, progress=None,
             finetune=None, evaluate=None, finetune_steps: int = 3,
             latency: float | None = None, threads: int = 1, block_gates: bool = True,
             solver: str = "milp", provider: str = "cpu", dims: dict | None = None,
             measure_groups: bool = False) -> Result:
    """Compress ``model`` to ``flops``/``params`` (fractions of the original to keep).

    Returns a :class:`Result` whose ``model`` is of the same kind as the input (an fx
    GraphModule for a torch module, an ``onnx.ModelProto`` for ONNX). ``method``: ``idap``
    (default; information-flow divergence on calibration data, iterative schedule
    ``p_t = base·(1 + t/steps)^alpha``), ``magnitude``, ``taylor`` (torch only; ``loss(outputs,
    inputs)`` or the mean squared output) or ``random``. ``calib``: tensors, a DataLoader or any
    iterable of input batches, a dict of input name -> array, or an ``.npz`` path; without it,
    seeded standard-normal inputs (with a warning). ``plan`` applies a given plan instead.
    ``heal``: ``lsq`` (default: every layer that lost input channels is refitted by least
    squares to reproduce the original layer's output on calibration data), ``stats``
    (per-channel statistics matching), ``bias`` (bias compensation: removed channels' mean
    contribution moves into the next layer's bias) or ``none``; a healed model is kept only if it
    lowers the calibration output error.
    Stage 2 (layer truncation) bypasses residual blocks with the smallest relative change
    ``‖F(x)‖/‖x‖`` (``block_score="influence"``: ShortGPT's 1 − cos) one at a time: ``blocks=N``
    of them, or (``blocks=None``) as many as keep the calibration output error
    ``‖N₀−N‖²/‖N₀‖²`` within ``max_error``; healing substitutes each branch's mean output.
    ``block_kinds`` limits the candidates to some of ``residual`` (convolutional branches),
    ``attention``, ``mlp`` (transformer sub-blocks) and ``layer`` (whole transformer layers);
    default all.
    ``round_to=N``: every pruned channel group keeps a multiple of ``N`` units (at least ``N``;
    a group of ``N`` units or fewer stays whole). ``keep``: node-name patterns (fnmatch globs,
    matched against IR node names, the backend's own node names and the names of their
    parameters); channel groups touching a matching node are frozen (reason "kept by --keep")
    and blocks containing one are never bypassed. ``progress(stage, step, total)`` is called
    as selection steps and calibration passes complete (``total`` may be None).
    ``finetune(student, teacher)`` (torch): prune in ``finetune_steps`` steps (each toward
    ``target^(t/finetune_steps)``), then the blocks of stage 2, fine-tuning after every step;
    the teacher is the previous step's model (:func:`idapgraph.finetune.distill` builds one).
    ``evaluate(model) -> float`` adds a metric to each step's entry in ``report.pipeline``.
    ``latency=R``: keep ``R`` of the unpruned model's onnxruntime latency, measured with
    ``threads`` intra-op threads on ``provider`` (``cpu``, default, or ``cuda``: onnxruntime-gpu's
    CUDA provider, tables of its own). Channel counts (kernel-friendly: multiples of 8/16/32
    channels, or of ``round_to`` when larger; a narrow group also halvings down to 4 channels when
    the budget cannot be met otherwise) and, with ``block_gates``, bypasses of blocks
    that hold channel groups of their own are chosen together by a MILP (``solver="milp"``,
    HiGHS; ``"greedy"``: the fallback heuristic) over measured per-layer latency tables cached
    on disk (see :func:`profile`), the emitted candidate timed and the budget corrected up to
    3 times; ``report.latency_target`` has the figures. ``max_error`` (default 0.05) bounds
    the calibration output error of each block offered to the solver. ``dims`` (an ONNX
    model's symbolic input dim name -> size, e.g. ``{"sequence": 128}``): the sizes latency is
    timed at (default 1 for every symbolic dim); the output keeps its dims symbolic.
    ``measure_groups``: the solver weighs each group by its measured calibration loss (three
    healed models per group: slower, better on the MNIST CNN; see :func:`_group_losses`).
    """
    _check_ratio("flops", flops)
    _check_ratio("params", params)
    _check_ratio("latency", latency)
    from .runners.providers import resolve

    provider = resolve(provider)
    if latency is not None:
        if flops is not None or params is not None or plan is not None:
            raise InputError("latency= is a target of its own: drop flops=/params=/plan=")
        if finetune is not None or evaluate is not None:
            raise InputError("latency= does not combine with finetune=/evaluate= yet")
        if blocks:
            raise InputError("latency= chooses the blocks it bypasses itself: drop blocks= "
                             "(block_gates=False keeps every block)")
        _check_threads(threads)
        if solver not in ("milp", "greedy"):
            raise InputError(f"unknown solver {solver!r} (choose from milp, greedy)")
    elif dims:
        raise InputError("dims= gives the sizes latency=R is timed at: give latency= too")
    elif measure_groups:
        raise InputError("measure_groups= weighs the groups for latency=R: give latency= too")
    if method not in scoring.METHODS:
        raise InputError(f"unknown method {method!r} (choose from {', '.join(scoring.METHODS)})")
    if plan is None and flops is None and params is None and latency is None and not blocks \
            and max_error is None:
        raise InputError("give a target: flops=R and/or params=R, latency=R, or blocks=N / "
                         "max_error=E")
    if block_score not in ("relative", "influence"):
        raise InputError(f"unknown block score {block_score!r} (choose from relative, influence)")
    if blocks is not None and (not isinstance(blocks, int) or blocks < 0):
        raise InputError(f"blocks must be a count >= 0, got {blocks!r}")
    if max_error is not None and not max_error >= 0:
        raise InputError(f"max_error must be >= 0, got {max_error!r}")
    if block_kinds is not None:
        block_kinds = [block_kinds] if isinstance(block_kinds, str) else list(block_kinds)
        bad = [k for k in block_kinds if k not in blocks_pass.BLOCK_KINDS]
        if bad:
            raise InputError(f"unknown block kind(s) {bad} (choose from "
                             f"{', '.join(blocks_pass.BLOCK_KINDS)})")
    if heal not in ("none", "bias", "stats", "lsq"):
        raise InputError(f"unknown heal mode {heal!r} (choose from none, bias, stats, lsq)")
    if not (steps >= 1 and alpha >= 0 and 0 < base <= 1 and 0 <= min_keep < 1):
        raise InputError("need steps >= 1, alpha >= 0, 0 < base <= 1 and 0 <= min_keep < 1")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be an integer >= 1, got {round_to!r}")
    if finetune is not None or evaluate is not None:
        if plan is not None:
            raise InputError("a given plan is applied in one step: it cannot be fine-tuned "
                             "step by step (drop plan= or finetune=/evaluate=)")
        from . import pipeline

        return pipeline.run(model, example_inputs, flops=flops, params=params,
                            steps=finetune_steps, finetune=finetune, evaluate=evaluate,
                            kw=dict(method=method, calib=calib, seed=seed, min_keep=min_keep,
                                    steps=steps, alpha=alpha, base=base, loss=loss, heal=heal,
                                    blocks=blocks, max_error=max_error,
                                    block_score=block_score, block_kinds=block_kinds,
                                    round_to=round_to, keep=keep, progress=progress))
    keep = [keep] if isinstance(keep, str) else list(keep or [])
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    kept_nodes: set[str] = set()
    a.model.progress = progress
    if keep:
        aliases = a.model.node_aliases()
        unmatched = [p for p in keep if not keep_pass.matching(a.graph, [p], aliases)]
        if unmatched:
            raise InputError(f"keep pattern(s) {unmatched} match no node of the model")
        kept_nodes = keep_pass.matching(a.graph, keep, aliases)
        held = set(keep_pass.touched_groups(a.graph, a.coupling, kept_nodes))
        if plan is not None and held & {k for k, v in plan.remove.items() if v}:
            raise InputError(f"plan removes channels of group(s) "
                             f"{sorted(held & set(plan.remove))}, kept by --keep")
        a.coupling = keep_pass.protect(a.graph, a.coupling, kept_nodes)
    g, coupling = a.graph, a.coupling
    warn: list[str] = a.warnings
    for msg in warn:
        warnings.warn(msg, stacklevel=2)
    log: list[dict] = []
    reached, kind = True, "none"
    lat_info = None
    if latency is not None:
        plan, lat_info, kind = _latency_plan(a, method, latency, calib=calib, seed=seed,
                                             loss=loss, warn=warn, min_keep=min_keep,
                                             round_to=round_to, threads=threads,
                                             gates=block_gates, kinds=block_kinds,
                                             keep_nodes=kept_nodes, solver=solver,
                                             progress=progress, provider=provider, dims=dims,
                                             measure_groups=measure_groups,
                                             gate_error=0.05 if max_error is None else max_error)
    elif plan is None:
        sel, kind = _select_plan(a, method, flops=flops, params=params, calib=calib, seed=seed,
                                 min_keep=min_keep, steps=steps, alpha=alpha, base=base, loss=loss,
                                 warn=warn, log=log, round_to=round_to, progress=progress)
        plan, reached = sel.plan, sel.reached
        if not reached:
            msg = (f"target not reachable: frozen channels and the per-group minimum "
                   f"({min_keep:.0%}) leave FLOPs at {sel.flops / max(a.cost.flops, 1):.3f} "
                   f"and params at {sel.params / max(a.cost.params, 1):.3f} of the original")
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
    plan.meta.update({"backend": g.backend, "method": method, "seed": seed,
                      "target": {"flops": flops, "params": params,
                                 **({"latency": latency} if latency else {})}})
    try:
        rewrite = prune_pass.resolve(g, coupling, plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None
    out = a.model.emit(rewrite, "remove")
    a.model.validate(out)
    heal_rep = heal_pass.HealReport()
    if heal != "none" and plan.remove:
        batches, real = a.model.calibration(calib, seed)
        if not real and kind == "none":
            msg = "no calibration data: healing statistics come from seeded standard-normal inputs"
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
        out, heal_rep = _heal(a, out, rewrite, batches, mode=heal)
        if heal_rep.kept:
            a.model.validate(out)
    bypassed, gone, block_scores, stored = [], set(), {}, 0
    if plan.bypass or latency is None and ((blocks or 0) > 0
                                           or (blocks is None and max_error is not None)):
        stage2_batches = None
        if not plan.bypass:
            stage2_batches, real = a.model.calibration(calib, seed)
        out, bypassed, gone, block_scores, stored = _truncate(
            a, out, stage2_batches, n_blocks=blocks, max_error=max_error, score=block_score,
            mean_substitution=heal != "none", plan_bypass=plan.bypass or None,
            kinds=block_kinds, keep_nodes=kept_nodes, sized=params is not None)
        plan.bypass = list(bypassed)
        if blocks and len(bypassed) < blocks:
            reached = False
            msg = f"bypassed {len(bypassed)} of the {blocks} blocks asked for (no more found or error bound hit)"
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
        a.model.validate(out)
    if lat_info is not None:
        from .latency_target import MISS, ratio

        ref, now = ratio(onnx_dims.fixed(a.model.as_onnx(a.model.source), dims),
                         onnx_dims.fixed(a.model.as_onnx(out), dims), threads, provider=provider)
        lat_info["after_ms"], lat_info["reference_ms"] = round(now, 4), round(ref, 4)
        lat_info["ratio"] = round(now / ref, 4)
        if lat_info["ratio"] > (1 + MISS) * latency:
            reached = False
            msg = (f"latency target {latency} missed: the compressed model runs in "
                   f"{lat_info['ratio']:.3f} of the original's time (measured); frozen channels, "
                   "the per-group minimum or timing noise")
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
    after = cost_pass.count(g, lambda t: rewrite.new_shapes[t], removed=gone)
    bias_flops, bias_params = _added_bias_cost(g, rewrite, heal_rep, gone)
    if g.backend == "onnx" and heal_rep.kept and heal_rep.corrections:
        _stamp(out, "idapgraph.healing", {k: v for k, v in asdict(heal_rep).items()
                                         if k != "bias_added"})
    final = {"flops": (a.cost.flops, after.flops + bias_flops),
             "params": (a.cost.params, after.params + stored + bias_params)}
    for name, ratio in (("flops", flops), ("params", params)):
        before, now = final[name]
        if reached and ratio is not None and now > ratio * before + 0.5:
            reached = False  # healing's added biases (or stored means) pushed it over
            msg = (f"{name} target {ratio} missed after healing: {now / max(before, 1):.4f} of "
                   f"the original (biases healing added: {bias_params} parameters; stored means: "
                   f"{stored}); ask for a little less or use heal='none'")
            warn.append(msg)
            warnings.warn(msg, stacklevel=2)
    report = Report(
        backend=g.backend, flops_before=a.cost.flops, flops_after=after.flops + bias_flops,
        params_before=a.cost.params, params_after=after.params + stored + bias_params,
        target={"flops": flops, "params": params, **({"latency": latency} if latency else {})},
        reached=reached, method=method, latency_target=lat_info,
        groups=len(coupling.groups), groups_pruned=sum(1 for v in plan.remove.values() if v),
        units_removed=plan.n_removed,
        frozen=[asdict(f) for f in coupling.frozen], warnings=warn, calibration=kind, steps=log,
        heal=asdict(heal_rep), blocks_bypassed=bypassed, block_scores=block_scores,
        params_constants=stored, round_to=round_to, keep=keep,
        kept_nodes=[n for n in g.nodes if n in kept_nodes],
        layers=cost_pass.layer_changes(g, a.cost, after, lambda t: rewrite.new_shapes[t], gone))
    return Result(model=out, plan=plan, report=report)


def _added_bias_cost(g, rewrite: Rewrite, rep, gone: set[str]) -> tuple[int, int]:
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


def _stamp(model, key: str, value) -> None:
    """Record ``value`` (JSON) in an ONNX model's ``metadata_props`` under ``key`` (replacing
    an earlier entry): how ``diff`` learns what healing did to each layer."""
    for p in list(model.metadata_props):
        if p.key == key:
            model.metadata_props.remove(p)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value, sort_keys=True)


def apply_plan(model, plan: Plan, example_inputs=None, mode: str = "remove"):
    """Apply ``plan`` to ``model`` and return the emitted model (``mode="zero"`` zeroes the
    planned channels instead of removing them: the reference for equivalence checks)."""
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    try:
        rewrite = prune_pass.resolve(a.graph, a.coupling, plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None
    out = a.model.emit(rewrite, mode)
    if mode == "remove":
        if plan.bypass:
            out = _bypassed(a, out, plan.bypass)
        a.model.validate(out)
    return out
