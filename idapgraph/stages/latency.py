"""``latency=R`` orchestration: one-shot scores, block gates priced by their measured bypass
error, the MILP over measured tables with closed-loop timing (:mod:`idapgraph.latency_target`),
and the measure stage that times the result against the original."""

from __future__ import annotations

from .. import latency_target
from ..analysis import Analysis, timing_analysis
from ..ir.plan import Plan
from ..passes import prune as prune_pass
from ..passes import select as select_pass
from ..passes.latency import kept_importance, untimed_note
from . import measured
from .select import scores as unit_scores
from .select import scoring_data
from .state import State
from .truncate import bypassed, emitted

DEFAULT_GATE_ERROR = 0.05


def select(s: State) -> None:
    """The select stage of a latency target: ``s.plan`` and ``s.lat_info``."""
    if s.opts.latency is not None:
        s.plan, s.lat_info = latency_plan(s)


def latency_plan(s: State):
    """``latency=R`` selection: one-shot scores of the method, then the MILP over measured
    tables with closed-loop timing of the candidates. Blocks whose bypass alone raises the
    calibration output error past the gate error (``max_error``, default 0.05) are not offered
    to the solver; the others are priced by that error (:func:`block_weights`), and the ones
    bypassed together must keep it within the gate error as well. Latency is modelled and timed
    with the symbolic dims ``dims`` fixed (:func:`idapgraph.analysis.timing_analysis`).
    ``measure_groups``: the groups weigh their measured, healed losses (:func:`idapgraph.stages.measured.measured_losses`)
    and a block its bypass error, one scale for all. Returns (plan, latency record)."""
    o, a = s.opts, s.a
    gate_error = DEFAULT_GATE_ERROR if o.max_error is None else o.max_error
    timed = timing_analysis(a, o.dims, s.kept_nodes)
    batches = scoring_data(s)
    sc = unit_scores(a, o.method, batches, o.loss, o.seed)
    blocks = [b for b in a.blocks if (o.block_kinds is None or b.kind in o.block_kinds)
              and s.kept_nodes.isdisjoint(b.nodes)] if o.block_gates else []
    gate_errors, error = {}, None
    if blocks or o.measure_groups:
        batches = batches if batches is not None else _calibration(s)
        error = a.model.output_error(batches)
    for b in blocks:  # a block is offered only if bypassing it alone keeps the error bounded
        gate_errors[b.key] = error(bypassed(a, a.model.source, [b.key]))
    blocks = [b for b in blocks if gate_errors[b.key] <= gate_error]
    losses, weights = None, None
    if o.measure_groups:
        sc, losses = measured.measured_losses(a, batches, sc, o)  # as one FLOPs round
        weights = {b.key: gate_errors[b.key] for b in blocks} if blocks else None
    elif blocks:
        weights = block_weights(a, sc, gate_errors, error, o.min_keep)
    plan, info = _solve(s, timed, sc, blocks, weights, losses, gate_errors, error, gate_error)
    info["dims"] = dict(o.dims or {})
    info["group_losses"] = None if losses is None else \
        {g.key: {str(k): round(v, 6) for k, v in ls.items()}
         for g, ls in zip(a.coupling.groups, losses)}
    info["gate_errors"] = {k: round(float(v), 6) for k, v in gate_errors.items()}
    info["gate_error"] = gate_error
    return plan, info


def _calibration(s: State):
    batches, real = s.a.model.calibration(s.opts.calib, s.opts.seed)
    s.kind = "data" if real else "random"
    return batches


def _solve(s: State, timed: Analysis, sc, blocks, weights, losses, gate_errors, error,
           gate_error: float):
    """The MILP with closed-loop timing. Models are emitted from the symbolic analysis and
    their dims fixed afterwards: emitted from the fixed one, a dynamo export of BERT failed
    onnxruntime's checks (a Slice's starts and ends)."""
    o, a = s.opts, s.a
    held = {b.key: b for b in timed.blocks}
    table = latency_target.table_for(o.threads, provider=o.provider)
    plan, info = latency_target.select(
        timed, sc, target=o.latency, threads=o.threads, blocks=[held[b.key] for b in blocks],
        provider=o.provider, original=a.model.timing_onnx(a.model.source, o.dims),
        realize=lambda p: a.model.timing_onnx(emitted(a, p), o.dims),
        min_keep=o.min_keep, table=table, block_weights=weights, group_losses=losses,
        **latency_target.grid(o.round_to), solver=o.solver, progress=o.progress,
        block_errors=gate_errors if blocks else None, max_error=gate_error,
        bypass_error=(lambda keys: error(bypassed(a, a.model.source, keys))) if blocks else None)
    for note in info["notes"] + ([untimed_note(table)] if table.failed else []):  # untimed
        s.warn(note, stacklevel=4)
    return plan, info


def block_weights(a: Analysis, scores, block_errors: dict[str, float], error, min_keep: float):
    """Each block's importance on the scale of the groups' importance
    (:func:`idapgraph.passes.latency.kept_importance`), from measured calibration output
    errors: removing the lower-scoring half of every group (masked) costs ``E`` for ``S`` of
    that importance, so a block whose bypass alone costs ``e`` weighs ``e·S/E``. None when that
    calibration gives no scale (then a bypass costs its own groups' units)."""
    remove, lost = {}, 0.0
    for g, s in zip(a.coupling.groups, scores):
        k = g.n_units - max(select_pass.min_kept(g.n_units, min_keep), -(-g.n_units // 2))
        if k > 0:
            remove[g.key] = select_pass.lowest_units(s, k)
            whole, half = kept_importance(s, [g.n_units, g.n_units - k])
            lost += float(whole - half)
    if not remove or lost <= 0:
        return None
    half = Plan(remove=remove, meta={"backend": a.graph.backend})
    e = error(a.model.emit(prune_pass.resolve(a.graph, a.coupling, half), "zero"))
    if not e > 0:
        return None
    return {k: v * lost / e for k, v in block_errors.items()}


def measure(s: State) -> None:
    """The measure stage (``latency=R``): the compressed model timed in turns with the
    original; ``s.reached`` false, with a warning, when it misses the target."""
    o, m, info = s.opts, s.a.model, s.lat_info
    if info is None:
        return
    ref, now = latency_target.ratio(m.timing_onnx(m.source, o.dims), m.timing_onnx(s.out, o.dims),
                                    o.threads, provider=o.provider)
    info["after_ms"], info["reference_ms"] = round(now, 4), round(ref, 4)
    info["ratio"] = round(now / ref, 4)
    if info["ratio"] > (1 + latency_target.MISS) * o.latency:
        s.reached = False
        s.warn(f"latency target {o.latency} missed: the compressed model runs in "
               f"{info['ratio']:.3f} of the original's time (measured); frozen channels, "
               "the per-group minimum or timing noise")
