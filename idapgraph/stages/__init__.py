"""``compress`` as a pipeline of named stages over one :class:`State`:

    prepare → select (FLOPs/params, measured, or latency) → resolve → emit → heal → truncate → measure
    → report

Each stage is a function of the state (in the module named after it where it is more than a
few lines). The option checks run before, once (:meth:`CompressOptions.validated`).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import replace

from ..analysis import analyze
from ..backends import is_torch_module
from ..errors import InputError, UntraceableError
from ..options import CompressOptions
from ..passes import keep as keep_pass
from ..passes import prune as prune_pass
from ..results import Result
from . import heal, latency, measured, parts, report, select, truncate
from .state import State


def prepare(model, example_inputs, o: CompressOptions) -> State:
    """Analyse ``model`` and freeze what ``keep`` protects."""
    a = analyze(model, example_inputs)
    a.model.check_runnable()
    a.model.progress = o.progress
    s = State(a, o)
    if o.keep:
        aliases = a.model.node_aliases()
        unmatched = [p for p in o.keep if not keep_pass.matching(a.graph, [p], aliases)]
        if unmatched:
            raise InputError(f"keep pattern(s) {unmatched} match no node of the model")
        s.kept_nodes = keep_pass.matching(a.graph, o.keep, aliases)
        held = set(keep_pass.touched_groups(a.graph, a.coupling, s.kept_nodes))
        if o.plan is not None and held & {k for k, v in o.plan.remove.items() if v}:
            raise InputError(f"plan removes channels of group(s) "
                             f"{sorted(held & set(o.plan.remove))}, kept by --keep")
        a.coupling = keep_pass.protect(a.graph, a.coupling, s.kept_nodes)
    for msg in a.warnings:
        s.warn(msg, stacklevel=4)
    s.opts = _measuring(s)
    return s


def _measuring(s: State) -> CompressOptions:
    """``measure_groups=None`` (the default) decided: on for FLOPs/params and latency targets
    (no given plan) with real calibration data (``calib``) and least-squares healing (the
    losses measured are least-squares-healed ones) where the backend steps the model (a
    group's probes then cost about one calibration pass each) and the probes' model runs come
    to no more than :data:`measured.MEASURE_FLOPS` (else off, with a warning that says so);
    off without calibration data (losses on random inputs do not pay for their time), with
    other healing, and for ONNX models with external data or local functions, where every
    probe would run the whole model once per refitted layer. Under a latency target the
    losses weigh the groups in the solver (CIFAR ResNet-56 at ``latency=0.7``: 80.1 % top-1
    against 67.5 % from the scores alone, BENCHMARKS.md). ``order=None``: ``auto`` for
    ``method="idap"``, ``scores`` for the others (a baseline keeps its own criterion)."""
    o, a = s.opts, s.a
    if o.order is None:
        o = replace(o, order="auto" if o.method == "idap" else "scores")
    if o.measure_groups is not None:
        return o
    on = o.plan is None and o.heal == "lsq" and o.calib is not None and a.model.steppable \
        and (o.flops is not None or o.params is not None or o.latency is not None)
    if on and (work := measured.probe_flops(a, o)) > measured.MEASURE_FLOPS:
        s.warn(f"channel counts from scores only: measuring each group's loss would run "
               f"{work / 1e12:.0f} TFLOPs of probes (more than {measured.MEASURE_FLOPS / 1e12:.0f});"
               f" pass measure_groups=True (--measure-groups) to measure anyway", stacklevel=5)
        on = False
    return replace(o, measure_groups=on)


def resolve(s: State) -> None:
    """The plan, stamped with how it was made, as a rewrite: every removed unit's tensors and
    the new shapes."""
    o = s.opts
    s.plan.meta.update({"backend": s.a.graph.backend, "method": o.method, "seed": o.seed,
                        "target": o.target})
    try:
        s.rewrite = prune_pass.resolve(s.a.graph, s.a.coupling, s.plan)
    except prune_pass.PlanError as e:
        raise InputError(str(e)) from None


def emit(s: State) -> None:
    """The rewrite emitted by the backend (channels removed) and validated."""
    s.out = s.a.model.emit(s.rewrite, "remove")
    s.a.model.validate(s.out)


STAGES = (select.run, measured.run, latency.select, resolve, emit, heal.run, truncate.run, latency.measure)


def compress(model, example_inputs, options: CompressOptions) -> Result:
    """One compression of ``model`` with validated ``options``: the stages in order. A torch
    module that does not trace as a whole is compressed by its parts (:mod:`.parts`)."""
    try:
        s = prepare(model, example_inputs, options)
    except UntraceableError:
        if not is_torch_module(model):
            raise
        return parts.compress(model, example_inputs, options, compress)
    with _analysis_frozen():
        for stage in STAGES:
            stage(s)
        return report.run(s)


@contextmanager
def _analysis_frozen():
    """The objects alive after analysis (the IR and its graphs: millions on a 50k-node model)
    left out of the garbage collector's passes until compress ends. They stay alive anyway,
    and each full pass over them took a second at 50k nodes (3 s of a 35 s compress). Not
    done where the caller has frozen objects of its own (``gc.unfreeze`` would release
    theirs)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
