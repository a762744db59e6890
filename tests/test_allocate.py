"""Allocation by measured loss (``measure_groups`` with FLOPs/params targets): the allowed
counts, the greedy allocation on handed-in losses, and end to end on both backends a branch
whose channels matter kept while the branches that barely move the output are cut."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch

import idapgraph
import schemas
from helpers import ResidualBranches, export_onnx, onnx_out, rel_err
from idapgraph.passes import allocate


def _branches():
    """A 16-channel stream and three 32-channel residual branches; the outputs of branches 1
    and 2 are scaled down 100x, so only branch 0's channels move the output."""
    return ResidualBranches(width=32, damped=(1, 2))


STREAM, BRANCH0, QUIET = "w0.out", "w1.out", ("w3.out", "w5.out")
X = (torch.randn(1, 3, 8, 8),)


def test_allowed_and_probed_counts():
    assert allocate.options(64, 8, 0.1) == [64, 56, 48, 40, 32, 24, 16, 8]
    assert allocate.options(20, 8, 0.1) == [20, 16, 8]
    assert allocate.options(16, 8, 0.6) == [16]  # min_keep 0.6 rounds up to 16: no cut
    assert allocate.options(8, 8, 0.1) == [8]  # no wider than one quantum: left whole
    assert allocate.options(5, 1, 0.5) == [5, 4, 3]
    assert allocate.probe_counts(64, 8, 0.1, (0.25, 0.5, 0.75)) == [48, 32, 16]
    assert allocate.probe_counts(16, 8, 0.1, (0.25, 0.5, 0.75)) == [8]
    assert allocate.probe_counts(8, 8, 0.1, (0.25, 0.5, 0.75)) == []


def test_allocation_follows_the_handed_in_losses():
    """Pure: with the quiet branches' losses zero and the others large, a target the quiet
    branches can meet alone is met by them; a params target is met too."""
    a = idapgraph.analyze(_branches().eval(), X)
    groups = a.coupling.groups
    scores = [np.arange(g.n_units, dtype=float) for g in groups]
    losses = [{k: (0.0 if g.key in QUIET else 1.0) for k in (24, 16, 8)} for g in groups]
    sel = allocate.allocate(a.graph, a.coupling, scores, losses, flops=0.7)
    assert sel.reached and sel.flops <= 0.7 * a.cost.flops
    assert set(sel.plan.remove) <= set(QUIET) and sel.plan.remove
    for key, units in sel.plan.remove.items():  # the lowest-scoring units go
        assert units == list(range(len(units)))
    both = allocate.allocate(a.graph, a.coupling, scores, losses, flops=0.9, params=0.5)
    assert both.reached and both.params <= 0.5 * a.cost.params
    assert not allocate.allocate(a.graph, a.coupling, scores, losses, flops=0.01).reached


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_measured_allocation_spares_the_branch_that_matters(backend):
    """Scores are normalised within each group, so the scores alone (``measure_groups=False``)
    cut every branch alike; the default with calibration data measures each group's healed
    loss, and the branch that moves the output keeps its channels: at the same FLOPs the
    held-out output error is far lower. The report lists the measured losses; the emitted
    model is valid."""
    model = _branches().eval()
    cal, held = torch.randn(64, 3, 8, 8), torch.randn(64, 3, 8, 8)
    src, ex = (model, X) if backend == "fx" else (
        export_onnx(model, X, input_names=["x"], dynamic_axes={"x": {0: "batch"}}), None)
    with torch.no_grad():
        ref = model(held).numpy()

    def error(result) -> float:
        if backend == "fx":
            with torch.no_grad():
                return rel_err(ref, result.model(held).numpy())
        onnx.checker.check_model(result.model, full_check=True)
        return rel_err(ref, onnx_out(result.model, {"x": held.numpy()})[0])

    scores = idapgraph.compress(src, ex, flops=0.6, calib=cal, measure_groups=False)
    measured = idapgraph.compress(src, ex, flops=0.6, calib=cal)  # the default measures
    assert measured.report.reached and measured.report.flops_ratio <= 0.6
    assert len(measured.report.group_losses) == 2  # 0.6 = two rounds keeping >= 0.7 each
    losses = measured.report.group_losses[0]
    assert set(losses) == {STREAM, BRANCH0, *QUIET}
    assert list(losses[BRANCH0]) == ["24", "16", "8"] and list(losses[STREAM]) == ["8"]
    assert all(losses[BRANCH0]["16"] > 100 * losses[q]["16"] for q in QUIET)
    assert BRANCH0 not in measured.plan.remove and STREAM not in measured.plan.remove
    assert BRANCH0 in scores.plan.remove  # what the measurement changes
    assert scores.report.group_losses is None
    assert [s["step"] for s in measured.report.steps] == [0, 1]
    whole = idapgraph.compress(src, ex, flops=1.0, calib=cal, measure_groups=True)
    assert not whole.plan.remove and whole.report.group_losses is None
    assert error(measured) < 0.1 * error(scores)


def test_default_measures_only_where_it_pays(tmp_path):
    """``measure_groups=None`` (the default) measures for a FLOPs target with calibration data
    and least-squares healing; not without calibration data, with other healing, for a given
    plan, or for an ONNX file with external data (no stepper: a probe per refitted layer)."""
    model = _branches().eval()
    cal = torch.randn(32, 3, 8, 8)
    proto = export_onnx(model, X, input_names=["x"], dynamic_axes={"x": {0: "batch"}})

    def measured(src, ex=None, **kw) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return idapgraph.compress(src, ex, flops=0.7, **kw).report.group_losses is not None

    assert measured(model, X, calib=cal) and measured(proto, calib=cal)
    assert not measured(model, X) and not measured(proto)
    assert not measured(proto, calib=cal, heal="stats")
    assert not measured(proto, calib=cal, measure_groups=False)
    plan = idapgraph.compress(proto, flops=0.7, calib=cal, measure_groups=False).plan
    assert not measured(proto, calib=cal, plan=plan)
    # 16 x 128 x 3 x 3 float weights (72 KiB) stay external at load (64 KiB and less are read in)
    wide = export_onnx(ResidualBranches(width=128, damped=(1, 2)).eval(), X, input_names=["x"],
                       dynamic_axes={"x": {0: "batch"}})
    path = tmp_path / "external.onnx"
    onnx.save_model(wide, str(path), save_as_external_data=True, location="external.onnx.data",
                    size_threshold=0)
    assert not measured(str(path), calib={"x": cal.numpy()})
    assert measured(str(path), calib={"x": cal.numpy()}, measure_groups=True)


def test_default_measures_only_within_its_probe_budget(monkeypatch):
    """The default measures only where the probes' model runs stay within
    ``MEASURE_FLOPS``: the estimate is rounds x probes x probe samples x a sample's FLOPs;
    over it the counts come from the scores, with a warning that names the way back."""
    from idapgraph.stages import measured as measured_stage

    model, cal = _branches().eval(), torch.randn(32, 3, 8, 8)
    a = idapgraph.analyze(model, X)
    opts = idapgraph.CompressOptions(flops=0.6, calib=cal)
    work = measured_stage.probe_flops(a, opts)
    # two rounds; the stream (16 channels) probed at 8, each 32-channel branch at 24, 16, 8;
    # all 32 samples
    assert work == 2 * (1 + 3 * 3) * 32 * a.cost.flops
    monkeypatch.setattr(measured_stage, "MEASURE_FLOPS", work * 0.99)
    with pytest.warns(UserWarning, match="from scores only.*measure_groups=True"):
        over = idapgraph.compress(model, X, flops=0.6, calib=cal)
    assert over.report.group_losses is None
    assert idapgraph.compress(model, X, flops=0.6, calib=cal,
                              measure_groups=True).report.group_losses is not None
    monkeypatch.setattr(measured_stage, "MEASURE_FLOPS", work)
    assert idapgraph.compress(model, X, flops=0.6, calib=cal).report.group_losses is not None


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_probe_healing_equals_the_ordinary_refit(backend):
    """A measured group loss (``probe``): the same refit and error as the ordinary
    least-squares heal of that cut, the unhealed model not measured, and the original's values
    at the refitted layers kept for the group's next probe, which then does not step the
    original again."""
    from idapgraph.ir.plan import Plan
    from idapgraph.passes import prune as prune_pass
    from idapgraph.stages import heal as heal_stage

    model = _branches().eval()
    src, ex = (model, X) if backend == "fx" else (
        export_onnx(model, X, input_names=["x"], dynamic_axes={"x": {0: "batch"}}), None)
    a = idapgraph.analyze(src, ex)
    batches, _ = a.model.calibration(torch.randn(16, 3, 8, 8), 0)
    probe, errors = heal_stage.Probe(), []
    for units in ([0, 1, 2, 3], list(range(16))):
        cut = Plan(remove={BRANCH0: units}, meta={"backend": a.graph.backend})
        rewrite = prune_pass.resolve(a.graph, a.coupling, cut)
        _, plain = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches,
                                   mode="lsq", drifted=False)
        stepped, real = [], a.model.stepper
        a.model.stepper = lambda m, *args, **kw: (
            stepped.append(m is a.model.source), real(m, *args, **kw))[1]
        try:
            _, fast = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches,
                                      mode="lsq", drifted=False, probe=probe)
        finally:
            del a.model.stepper
        assert np.isnan(fast.error_before) and fast.kept and fast.layers == plain.layers > 0
        assert fast.error_after == pytest.approx(plain.error_after, rel=1e-5, abs=1e-9)
        # the original is stepped for the first probe only; the pruned model each time
        assert stepped == ([False, True] if not errors else [False])
        errors.append(fast.error_after)
    assert probe.kept and errors[1] > errors[0] > 0


def test_probes_start_where_the_cut_begins():
    """fx: the probes of a measured group loss run the pruned model and the original only from
    the first node the cut changed, from the original's values there (``Model.trace``: the
    original stepped once for all groups, in graph order): the same healed errors as probes
    run from the inputs. A cut that lies behind the trace starts it again; ONNX has no trace
    (its probes run from the inputs)."""
    from idapgraph.ir.plan import Plan
    from idapgraph.passes import prune as prune_pass
    from idapgraph.stages import heal as heal_stage

    a = idapgraph.analyze(_branches().eval(), X)
    batches, _ = a.model.calibration(torch.randn(16, 3, 8, 8), 0)
    trace, starts, steps = a.model.trace(batches), [], []
    real = a.model.stepper
    for key in (BRANCH0, QUIET[1], QUIET[0], STREAM):  # QUIET[0] lies behind QUIET[1]
        cut = Plan(remove={key: list(range(8))}, meta={"backend": a.graph.backend})
        rewrite = prune_pass.resolve(a.graph, a.coupling, cut)
        _, plain = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches,
                                   mode="lsq", drifted=False, probe=heal_stage.Probe())
        a.model.stepper = lambda m, b, copy=True, start=None: (
            starts.append(start and start[0]), real(m, b, copy, start))[1]
        try:
            _, fast = heal_stage.heal(a, a.model.emit(rewrite, "remove"), rewrite, batches,
                                      mode="lsq", drifted=False, probe=heal_stage.Probe(trace))
        finally:
            del a.model.stepper
        steps.append(trace.step)
        assert fast.layers == plain.layers > 0
        assert fast.error_after == pytest.approx(plain.error_after, rel=1e-6, abs=1e-12)
    assert starts and all(p > 0 for p in starts)  # never from the inputs
    assert steps[0] is steps[1] is not steps[2]  # started again for the cut behind it
    proto = export_onnx(_branches().eval(), X, input_names=["x"])
    assert idapgraph.analyze(proto).model.trace(batches) is None


def test_rounds_and_composed_plans():
    """The rounds each keep at least ROUND_KEEP of what they start from, and a later round's
    plan (on the model the first left: unit j is the j-th kept) maps back onto the original."""
    from idapgraph.ir.plan import Plan
    from idapgraph.options import CompressOptions
    from idapgraph.stages import measured

    assert [measured.rounds(CompressOptions(flops=t)) for t in (0.9, 0.7, 0.5, 0.3)] == [1, 1, 2, 4]
    assert measured.rounds(CompressOptions(flops=0.9, params=0.45)) == 3
    a = idapgraph.analyze(_branches().eval(), X)
    first = Plan(remove={BRANCH0: [0, 2, 4]}, meta={"backend": "fx"})
    both = measured.composed(a, first, Plan(remove={BRANCH0: [0, 1, 2], STREAM: [15]}))
    assert both.remove == {BRANCH0: [0, 1, 2, 3, 4, 5], STREAM: [15]}
    assert both.units == {BRANCH0: 32, STREAM: 16}


def test_cli_measure_groups_with_a_flops_target(tmp_path):
    """``--measure-groups --flops``: the report has each round's measured losses (schema) and
    the human output says how the counts were allocated; the model is written."""
    src = tmp_path / "b.onnx"
    src.write_bytes(export_onnx(_branches().eval(), X).SerializeToString())
    np.savez(tmp_path / "cal.npz", torch.randn(32, 3, 8, 8).numpy())
    args = [sys.executable, "-m", "idapgraph", "compress", str(src), "-o", str(tmp_path / "s.onnx"),
            "--flops", "0.6", "--measure-groups", "--calib", str(tmp_path / "cal.npz")]
    r = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    schemas.check(rep, schemas.COMPRESS)
    assert len(rep["group_losses"]) == 2 and rep["reached"] and rep["flops_ratio"] <= 0.6
    onnx.checker.check_model(onnx.load(str(tmp_path / "s.onnx")), full_check=True)
    human = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert human.returncode == 0 and "allocated by measured group losses" in human.stdout


def test_probe_samples_are_spread_over_a_class_sorted_calibration_set():
    """The measured losses run on a subset of the calibration samples; taken from the front of
    a set sorted by class (CIFAR-10's test file is), 64 of 260 images were three classes. The
    subset is spread over every batch: every class is in it, each batch's arrays cut alike;
    a model that takes only its own batch size gets whole, evenly spaced batches."""
    from idapgraph.stages.select import spread_samples

    labels = np.repeat(np.arange(10), 26)  # 260 samples sorted by class
    images = np.arange(260 * 2, dtype=np.float32).reshape(260, 2)
    batches = [(images[i:i + 32], labels[i:i + 32]) for i in range(0, 260, 32)]
    got = spread_samples(batches, 64)
    assert sum(len(b[0]) for b in got) == 64
    assert set(np.concatenate([b[1] for b in got])) == set(range(10))
    for x, y in got:  # a sample's image and label stay together
        np.testing.assert_array_equal(labels[(x[:, 0] // 2).astype(int)], y)
    whole = spread_samples(batches, 64, exact=True)
    assert all(len(b[0]) == 32 for b in whole) and len(whole) == 2
    assert whole[0][1][0] == 0 and whole[1][1][0] > 2  # not the first two batches
    assert spread_samples(batches, 300) == batches
    # an array without the batch axis beside the images: whole batches, never cut
    odd = [(x, np.zeros(3)) for x, _ in batches]
    kept = spread_samples(odd, 64)
    assert all(any(b is o for o in odd) for b in kept) and sum(len(b[0]) for b in kept) >= 64
