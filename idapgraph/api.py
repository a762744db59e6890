"""The public Python API: ``analyze``, ``compress``, ``apply_plan``, ``latency``, ``profile``.

Thin entry points: the work is done by the backends (:mod:`idapgraph.backends`), the analysis
(:mod:`idapgraph.analysis`) and the stages of ``compress`` (:mod:`idapgraph.stages`). This module
holds no op semantics and imports neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any

from . import pipeline, stages
from .analysis import Analysis, analyze, timing_analysis
from .backends import Model, load, onnx_proto
from .errors import InputError
from .frontends import onnx_dims
from .ir.plan import Plan
from .options import CompressOptions, check_threads
from .passes import prune as prune_pass
from .passes.latency import untimed_note
from .results import Report, Result
from .stages import parts
from .stages.truncate import bypassed

__all__ = ["Analysis", "CompressOptions", "Model", "Plan", "Report", "Result", "analyze",
           "apply_plan", "compress", "latency", "load", "profile"]


def compress(model, example_inputs=None, *, options: CompressOptions | None = None,
             **kwargs) -> Result:
    """Compress ``model`` to ``flops``/``params`` (fractions of the original to keep).

    The keyword arguments are the fields of :class:`~idapgraph.options.CompressOptions`;
    ``options=`` passes a whole object of them (keywords override its fields).

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
    contribution moves into the next layer's bias), ``bn`` (every BatchNorm's running statistics
    re-estimated on the calibration data; ``lsq`` for a model without BatchNorm) or ``none``; a
    healed model is kept only if it lowers the calibration output error (``bn``: or raises the
    share of calibration samples whose top-1 class is the original's).
    Stage 2 (layer truncation) bypasses residual blocks with the smallest relative change
    ``‖F(x)‖/‖x‖`` (``block_score="influence"``: ShortGPT's 1 − cos; ``"measured"``: SLEB-style,
    each candidate bypassed in turn and the lowest calibration output error goes, one
    calibration run per candidate per step) one at a time: ``blocks=N``
    of them, or (``blocks=None``) as many as keep the calibration output error
    ``‖N₀−N‖²/‖N₀‖²`` within ``max_error``; healing substitutes each branch's mean output.
    ``block_kinds`` limits the candidates to some of ``residual`` (convolutional branches),
    ``attention``, ``mlp`` (transformer sub-blocks) and ``layer`` (whole transformer layers);
    default all.
    ``round_to=N``: every pruned channel group keeps a multiple of ``N`` units (at least ``N``;
    a group of ``N`` units or fewer stays whole); by default (``None``) a multiple of 8
    channels (8 units of one channel, any number of 32-wide attention heads; a group of 8
    channels or fewer keeps any count), which onnxruntime's blocked CPU convolutions need to
    run fast (exact counts made EfficientNet-Lite0 at 0.7 FLOPs 2× slower than the original);
    ``round_to=1``: exact counts. ``keep``: node-name patterns (fnmatch globs,
    matched against IR node names, the backend's own node names and the names of their
    parameters); channel groups touching a matching node are frozen (reason "kept by --keep")
    and blocks containing one are never bypassed. ``progress(stage, step, total)`` is called
    as selection steps and calibration passes complete (``total`` may be None).
    ``finetune(student, teacher)`` (torch): prune in ``finetune_steps`` steps (each toward
    ``target^(t/finetune_steps)``), then the blocks of stage 2, fine-tuning after every step;
    the teacher is the previous step's model (:func:`idapgraph.distill` builds one).
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
    ``measure_groups``: each group weighs its measured calibration loss (up to three healed
    models per group; see :func:`idapgraph.stages.losses.group_losses`). With
    ``flops``/``params`` the channel counts are allocated by measured loss per FLOP, in rounds
    (:mod:`idapgraph.stages.measured`; ``report.group_losses``); with ``latency`` the solver
    weighs the losses. Default (None): on for ``flops``/``params`` targets with ``calib`` data
    and ``heal="lsq"`` (off for ONNX models with external data or local functions), off for
    ``latency``; ``False``: the scores alone, 3-15x faster and less accurate (CIFAR ResNet-56
    at 0.7 FLOPs: 81.1 against 81.8 % top-1; EfficientNet-Lite0: 19.9 against 70.9 %;
    BENCHMARKS.md). ``order`` (measured allocation only): which units of a group go first --
    ``"obs"``: the least least-squares reconstruction error at the layers reading them
    (:mod:`idapgraph.passes.obs`; used for a group only where it beats the scores on held-out
    calibration samples); ``"scores"``: the method's scores; ``"auto"`` (default for
    ``method="idap"``, scores for the others): obs for groups that convolutions alone read,
    scores for the rest (measured: better on CIFAR ResNet-56 and EfficientNet-Lite0, slightly
    worse on MiniLM and SmolLM2; BENCHMARKS.md).
    """
    o = CompressOptions.of(options, **kwargs).validated()
    if o.finetune is not None or o.evaluate is not None:
        return pipeline.run(model, example_inputs, o)
    return stages.compress(model, example_inputs, o)


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
    model = onnx_proto(model)
    if dims:
        model = onnx_dims.fixed(model, onnx_dims.check(model, dict(dims)))
    return ort_latency(model, runs=runs, warmup=warmup, threads=threads,
                       provider=provider).to_dict()


def profile(model, example_inputs=None, *, threads: int = 1, refresh: bool = False,
            min_keep: float = 0.1, round_to: int | None = None, progress=None,
            table_path=None, provider: str = "cpu", dims: dict | None = None) -> dict[str, Any]:
    """Build (or, with ``refresh``, re-time) the onnxruntime latency tables ``latency=R`` reads
    for ``model``'s conv/linear layers at every channel count the selection may choose, cached
    on disk per machine, execution provider (``cpu`` or ``cuda``) and thread count
    (``$IDAPGRAPH_CACHE``, default ``~/.cache/idapgraph``), and time the whole model. ``dims``
    (symbolic dim name -> size, ONNX only): the sizes to time those dims at, as ``compress``
    would (default 1). Returns what was timed, reused and measured."""
    from . import latency_target
    from .runners.providers import resolve

    check_threads(threads)
    provider = resolve(provider)
    if not 0 <= min_keep < 1:
        raise InputError(f"min_keep must be in [0, 1), got {min_keep!r}")
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    timed = timing_analysis(a, dims)
    table = latency_target.table_for(threads, table_path, provider)
    lm, info = latency_target.latency_model(timed, timed.blocks, table, min_keep=min_keep,
                                            **latency_target.grid(round_to), progress=progress,
                                            refresh=refresh)
    measured = latency_target.measure(a.model.timing_onnx(a.model.source, dims),
                                      threads, provider=provider)
    tables_ms, _ = lm.raw(lm.full_choice())
    layers = sum(len(t.nodes) for t in lm.terms if t.kind == "lut")
    note = untimed_note(table)
    return {**info, "layers": layers, "model_ms": round(measured, 4),
            "tables_ms": round(tables_ms, 4), "threads": threads, "machine": table.machine,
            "dims": dict(dims or {}), "untimed": lm.untimed, "untimed_layers": lm.untimed_layers,
            "warnings": [note] if note else []}


def apply_plan(model, plan: Plan, example_inputs=None, mode: str = "remove"):
    """Apply ``plan`` to ``model`` and return the emitted model (``mode="zero"`` zeroes the
    planned channels instead of removing them: the reference for equivalence checks). A plan
    of a torch module compressed by its parts applies part by part."""
    if plan.meta.get("backend") == "fx-parts":
        return parts.apply(model, plan, example_inputs, mode, apply_plan)
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    try:
        rewrite = prune_pass.resolve(a.graph, a.coupling, plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None
    out = a.model.emit(rewrite, mode)
    if mode == "remove":
        if plan.bypass:
            out = bypassed(a, out, plan.bypass)
        a.model.validate(out)
    return out
