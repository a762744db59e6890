"""Latency-aware compression: look-up tables (cache, reuse, both channel sides), the latency model
against the emitted model's own layers, the MILP against brute force, and ``latency=R`` end to
end on both backends."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torchvision

import idapgraph
import schemas
from cost_clock import CostClock, layer_cost
from helpers import example_feeds, export_onnx
from idapgraph.errors import InputError
from idapgraph.passes import blocks as blocks_pass
from idapgraph.passes import latency as lat
from idapgraph.runners.latency_cache import DiskTable
from idapgraph.passes import latency_select
from idapgraph.runners import clock, op_timer, solver_output
from idapgraph.ir.ops import weighted_nodes


class CountingTimer:
    """A deterministic stand-in for onnxruntime's layer timer (the cost model of
    :mod:`cost_clock`: cost grows with both channel counts, a kernel-unfriendly count is slow),
    every call counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sig: dict, cin: int, cout: int) -> float:
        self.calls += 1
        return layer_cost(sig, cin, cout)


@pytest.fixture
def cost_clock():
    """Latency targets timed on the deterministic cost model, not on this (shared) machine."""
    with clock.using(CostClock()) as c:
        yield c


def _analysis(model=None, size=32):
    torch.manual_seed(0)
    model = model or torchvision.models.resnet18(num_classes=10).eval()
    return idapgraph.analyze(export_onnx(model, (torch.randn(1, 3, size, size),)))


def test_group_options_are_kernel_friendly():
    for n, width in [(16, 1), (64, 1), (256, 1), (2048, 1), (12, 64), (6, 1), (96, 1)]:
        opts = lat.group_options(n, width)
        assert opts[-1] == n and opts == sorted(set(opts)) and len(opts) <= lat.MAX_OPTIONS
        assert opts[0] >= idapgraph.passes.select.min_kept(n, 0.1)
        if n * width >= 16:
            assert all(c * width % 4 == 0 for c in opts[:-1]), (n, width, opts)
            if len(opts) >= lat.MIN_OPTIONS + 1 or n >= 32:
                assert all(c * width % 8 == 0 for c in opts[:-1]), (n, width, opts)
    # a narrow group gets halvings down to half a quantum, no lower
    assert lat.group_options(16, 1) == [4, 8, 16]
    assert lat.group_options(24, 1) == [4, 8, 16, 24]
    assert lat.group_options(32, 1) == [8, 16, 24, 32]
    # --round-to N: no count below N channels
    assert lat.group_options(64, 1, quantum=32, finest=32) == [32, 64]
    assert lat.group_options(16, 1, quantum=8, finest=8) == [8, 16]


def test_models_are_timed_in_settled_turns(monkeypatch):
    """``paired`` times each model in turns of ``block`` consecutive runs and does not count the
    first ``settle`` of each turn (the model's weights coming back into cache): every model gets
    exactly ``runs`` counted runs, and the calls follow the turns."""
    from idapgraph.emit import validate
    from idapgraph.runners import bench

    calls = []

    class Session:
        def __init__(self, name):
            self.name = name

        def run(self, outputs, feeds):
            calls.append(self.name)

    monkeypatch.setattr(validate, "session",
                        lambda m, threads=1, provider="": Session(m.graph.name))
    monkeypatch.setattr(validate, "example_feeds", lambda m: {})
    models = [onnx.helper.make_model(onnx.helper.make_graph([], n, [], [])) for n in "ab"]
    times = bench._times(models, None, runs=7, warmup=2, threads=1, block=4, settle=1)
    assert [len(t) for t in times] == [7, 7]
    # warm-up, then turns of 4 (3 counted) until 7 are counted: 3 turns each
    assert calls == list("aabb") + list("aaaabbbb") * 3
    assert len(bench.paired(models, runs=5)) == 2
    with pytest.raises(ValueError):
        bench._times(models, None, runs=3, warmup=0, threads=1, block=2, settle=2)
    # min_s: turns go on until they have lasted that long, every model as many runs (on a
    # fake clock that one run moves on by a millisecond)
    now = [0.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            return now[0]

    def run_1ms(self, outputs, feeds):
        now[0] += 1e-3

    monkeypatch.setattr(bench, "time", FakeTime)
    monkeypatch.setattr(Session, "run", run_1ms)
    times = bench._times(models, None, runs=2, warmup=0, threads=1, block=2, settle=0,
                         min_s=0.03)
    # a turn of both models is 4 ms: 8 turns reach 30 ms, 16 runs each, each timed at 1 ms
    assert [len(t) for t in times] == [16, 16]
    assert all(t == pytest.approx(1.0) for ts in times for t in ts)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux affinities and at least 2 CPUs to choose from")
def test_timing_runs_on_pinned_cpus(monkeypatch):
    """Inside ``pinned(n)`` the calling thread may use only the last ``n`` CPUs of its mask,
    which is restored afterwards; ``threads`` 0 (every core) or at least the mask's size change
    nothing. Models are created and timed there: every call of ``bench._times`` and the layer
    timer sees the one CPU."""
    from idapgraph.emit import validate
    from idapgraph.runners import bench
    from idapgraph.runners.affinity import pinned

    mask = os.sched_getaffinity(0)
    with pinned(1):
        assert os.sched_getaffinity(0) == {max(mask)}
    assert os.sched_getaffinity(0) == mask
    for n in (0, -1, len(mask)):
        with pinned(n):
            assert os.sched_getaffinity(0) == mask

    def refused(pid, cpus):
        raise PermissionError("sandboxed")

    with monkeypatch.context() as m:
        m.setattr(os, "sched_setaffinity", refused)
        with pinned(1):
            assert os.sched_getaffinity(0) == mask
    seen = []

    class Session:
        def __init__(self, *a, **k):
            seen.append(os.sched_getaffinity(0))

        def run(self, outputs, feeds):
            seen.append(os.sched_getaffinity(0))

    monkeypatch.setattr(validate, "session", lambda m, threads=1, provider="": Session())
    monkeypatch.setattr(validate, "example_feeds", lambda m: {})
    model = onnx.helper.make_model(onnx.helper.make_graph([], "a", [], []))
    bench._times([model], None, runs=3, warmup=1, threads=1)
    monkeypatch.setattr(op_timer, "_session", lambda m, threads, provider: Session())
    monkeypatch.setattr(op_timer, "example_feeds", lambda m, seed=0: {})
    op_timer._time_alone(model, 1, op_timer.CPU)
    assert len(seen) > 5 and all(s == {max(mask)} for s in seen)
    assert os.sched_getaffinity(0) == mask


def test_the_closed_loop_keeps_the_best_round_within_the_target():
    """A latency target is a limit: of the rounds measured within it (MISS, 10 %, over at most),
    the closest wins -- also when it is far faster than asked (two near-dead blocks bypassed,
    nothing left to spend the budget on) and a later round, with the budget raised, lands
    closer but over it; with none within it, the fastest."""
    from idapgraph.latency_target import _better

    goal, limit = 5.0, 5.0 * 1.10
    assert _better(0.8, 10.2, goal, limit)  # within beats over, however close
    assert not _better(10.2, 0.8, goal, limit)
    assert _better(5.2, 4.0, goal, limit)  # both within: the closer
    assert _better(5.4, 3.1, goal, limit)  # 8 % over still counts as reached
    assert not _better(3.1, 5.4, goal, limit)
    assert _better(6.0, 7.0, goal, limit)  # both over: the faster
    assert not _better(7.0, 6.0, goal, limit)


def test_table_is_cached_on_disk_and_reused(tmp_path):
    a = _analysis()
    path = tmp_path / "t.json"
    timer = CountingTimer()
    tab = DiskTable({"cpu": "x"}, path)
    m1 = lat.build(a.graph, a.coupling, a.blocks, tab, timer=timer)
    assert timer.calls == m1.timed == m1.needed > 0
    assert len(DiskTable({"cpu": "x"}, path)) == 0  # build does not write: save does
    tab.save()
    calls = timer.calls
    m2 = lat.build(a.graph, a.coupling, a.blocks, DiskTable({"cpu": "x"}, path), timer=timer)
    assert timer.calls == calls and m2.timed == 0 and m2.needed == m1.needed
    # another machine (or thread count) has a table of its own
    other = DiskTable({"cpu": "y"}, path)
    assert len(other) == 0
    # refresh times every entry again
    lat.build(a.graph, a.coupling, a.blocks, DiskTable({"cpu": "x"}, path), timer=timer,
              refresh=True)
    assert timer.calls == calls + m1.needed


def test_a_deeper_model_reuses_the_shallower_ones_entries(tmp_path):
    """ResNet-34 shares every layer signature of ResNet-18 at the same input size."""
    tab = DiskTable({"cpu": "x"}, tmp_path / "t.json")
    timer = CountingTimer()
    a18 = _analysis()
    lat.build(a18.graph, a18.coupling, a18.blocks, tab, timer=timer)
    a34 = _analysis(torchvision.models.resnet34(num_classes=10).eval())
    m34 = lat.build(a34.graph, a34.coupling, a34.blocks, tab, timer=timer)
    assert m34.needed > 0 and m34.timed < 0.2 * m34.needed


def _emitted_table_sum(model_proto, timer) -> float:
    """Σ timer over the conv/linear layers of an emitted model, read off its own graph."""
    b = idapgraph.analyze(model_proto)
    total = 0.0
    for n in weighted_nodes(b.graph):
        ls = lat.layer_signature(b.graph, n)
        assert ls is not None, n.name
        sig, sin, sout = ls
        total += timer(sig, b.graph.shape(sin.tensor)[sin.axis], b.graph.shape(sout.tensor)[sout.axis])
    return total


@pytest.mark.parametrize("net, bypass", [("resnet18", False), ("resnet18", True),
                                         ("mobilenet_v2", True)])
def test_model_prediction_equals_the_emitted_models_own_layers(tmp_path, net, bypass):
    """The model's table sum for a random choice equals the same timer summed over the layers of
    the model idapgraph emits for it: each layer's latency follows its producer's pruning
    (input channels) and its own (output channels); bypassed blocks cost nothing."""
    from idapgraph.latency_target import plan_of

    a = _analysis(getattr(torchvision.models, net)(num_classes=10).eval())
    timer = CountingTimer()
    m = lat.build(a.graph, a.coupling, a.blocks, DiskTable({}, tmp_path / "t.json"),
                  timer=timer)
    rng = np.random.default_rng(1)
    for trial in range(3):
        choice = [int(rng.integers(len(o))) for o in m.options]
        kept = list(range(len(m.blocks)))
        if bypass:
            kept.remove(int(rng.integers(len(m.blocks))))
            for g, holders in m.internal.items():  # a bypassed block's own groups stay whole
                if not set(holders) <= set(kept):
                    choice[g] = len(m.options[g]) - 1
        sol = latency_select.Solution(choice, kept, 0, 0, "test", "", 0, True)
        scores = [np.arange(g.n_units, dtype=float) for g in a.coupling.groups]
        plan = plan_of(a, m, scores, sol)
        assert bool(plan.bypass) == bypass
        want = _emitted_table_sum(idapgraph.apply_plan(a.model.source, plan), timer)
        got, _ = m.raw(choice, kept)
        assert got == pytest.approx(want, rel=1e-9), trial


def _brute_force(m, imp, budget):
    best = None
    for choice in itertools.product(*[range(len(o)) for o in m.options]):
        for kept in itertools.product([0, 1], repeat=len(m.blocks)):
            ks = [i for i, k in enumerate(kept) if k]
            if m.predict(list(choice), ks) <= budget and latency_select._within_cap(m, ks):
                v = latency_select._objective(imp, m, choice, ks)
                if best is None or v > best:
                    best = v
    return best


class TwoBlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.b2 = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 16, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b1(x)
        x = x + self.b2(x)
        return self.head(x.mean((2, 3)))


def test_solver_debug_lines_are_filtered(capfd):
    """HiGHS prints a debug line to the process's stdout while it solves; it is dropped, and
    everything else native code writes meanwhile is written back."""
    import ctypes
    import os

    libc = ctypes.CDLL(None)
    with solver_output.filtered():
        libc.printf(b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
        libc.printf(b"a line of the user's\n")
        os.write(1, b"HighsMipSolverData::another\nand one more")
    out = capfd.readouterr().out
    assert "HighsMipSolverData" not in out
    assert "a line of the user's\n" in out and out.endswith("and one more")


@pytest.mark.parametrize("seed, weighted, capped", [
    (0, False, False), (1, False, False), (2, False, False), (3, True, False), (4, True, False),
    (5, True, True), (6, False, True)])
def test_milp_matches_brute_force(tmp_path, seed, weighted, capped):
    """Both pricings of a bypass: its own groups' units, or a measured block weight; with an
    error cap, only one of the two blocks' errors fits under it."""
    a = _analysis(TwoBlockNet().eval(), size=16)
    m = lat.build(a.graph, a.coupling, a.blocks, DiskTable({}, tmp_path / "t.json"),
                  timer=CountingTimer())
    assert len(m.blocks) == 2 and len(m.options) == 3
    m.calibrate(1.3 * m.raw(m.full_choice())[0])
    rng = np.random.default_rng(seed)
    scores = [rng.random(g.n_units) for g in a.coupling.groups]
    if weighted:
        m.block_weight = list(rng.random(2) * 6)
    if capped:
        m.block_error = [0.02, 0.03]
        m.error_cap = 0.04
    imp = lat.importance(scores, m.options)
    full = m.predict(m.full_choice())
    for r in (0.9, 0.6, 0.4, 0.25):
        best = _brute_force(m, imp, r * full)
        if best is None:  # below what the cap lets the blocks save
            assert r * full < latency_select.fastest(m)
            continue
        sol = latency_select.solve(m, imp, r * full)
        assert sol.feasible and sol.predicted_ms <= r * full * (1 + 1e-6)
        assert latency_select._within_cap(m, sol.kept_blocks)
        assert sol.importance == pytest.approx(best, rel=3e-3), r
        g = latency_select.solve(m, imp, r * full, method="greedy")
        assert g.solver == "greedy" and g.feasible and g.importance <= best + 1e-9
        assert latency_select._within_cap(m, g.kept_blocks)
    # the fastest model the cap allows is reachable, and below it the solver says so
    floor = latency_select.fastest(m)
    sol = latency_select.solve(m, imp, 0.5 * floor)
    assert not sol.feasible and sol.predicted_ms <= floor * (1 + 1e-6)
    assert latency_select._within_cap(m, sol.kept_blocks)
    assert len(sol.kept_blocks) == (1 if capped else 0)


def test_measured_group_importance_follows_the_measured_losses():
    """A group weighed by measured losses (``measure_groups``): at a measured count its
    importance is the worst count's loss less the measured one, keeping every unit loses
    nothing, fewer units never lose less (a measured dip is taken as noise), and past the
    last measurement the last slope goes on."""
    rng = np.random.default_rng(0)
    s = rng.random(32)
    counts = list(range(4, 33, 4))
    losses = {24: 0.1, 16: 0.05, 8: 0.9}  # 16 below 24: a dip
    imp = lat.measured_importance(s, counts, losses)
    loss = imp.max() - imp
    assert loss[counts.index(32)] == pytest.approx(0.0)
    assert loss[counts.index(24)] == pytest.approx(0.1)
    assert loss[counts.index(16)] == pytest.approx(0.1)  # the dip flattened
    assert loss[counts.index(8)] == pytest.approx(0.9)
    assert np.all(np.diff(loss) <= 1e-12)  # more units kept, never more loss
    assert loss[counts.index(4)] > 0.9  # extrapolated
    assert imp.min() == pytest.approx(0.0)
    # without losses, importance is the unit-count shape
    assert np.allclose(lat.importance([s], [counts])[0], lat.kept_importance(s, counts))


def test_a_kernel_unfriendly_count_is_avoided(tmp_path):
    """With every count allowed (quantum 1) and odd output counts timed 1.5x slower, the
    solver's choices land on fast counts whenever a fast one keeps as much importance."""
    a = _analysis(TwoBlockNet().eval(), size=16)
    m = lat.build(a.graph, a.coupling, [], DiskTable({}, tmp_path / "t.json"),
                  timer=CountingTimer(), quantum=1)
    m.calibrate(m.raw(m.full_choice())[0])
    assert any(c % 8 for o in m.options for c in o)  # slow counts are on offer
    imp = lat.importance([np.ones(g.n_units) for g in a.coupling.groups], m.options)
    sol = latency_select.solve(m, imp, 0.5 * m.predict(m.full_choice()))
    counts = m.counts(sol.choice)
    # a slow count is only chosen where the next fast count below it saves too little
    for g, c in enumerate(counts):
        assert c % 8 == 0 or c == m.options[g][-1] or c < 8, counts


def test_op_timer_builds_valid_one_node_models():
    """The layer models the op timer runs are valid and compute the layer: onnxruntime runs
    them and their output has ``cout`` channels (the context model's too, between its two
    neighbours)."""
    import onnxruntime as ort

    for sig, cin, cout in [
        ({"op": "conv", "spatial": [8, 8], "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1],
          "dilation": [1, 1], "group_in": None, "bias": True, "batch": 1, "dtype": "float32"}, 4, 8),
        ({"op": "conv", "spatial": [8, 8], "kernel": [3, 3], "stride": [2, 2], "pads": [1, 1, 1, 1],
          "dilation": [1, 1], "group_in": 1, "bias": False, "batch": 1, "dtype": "float32"}, 8, 8),
        ({"op": "linear", "rows": 4, "bias": True, "dtype": "float32"}, 16, 8),
    ]:
        models = [op_timer.one_op_model(sig, cin, cout)]
        if sig["op"] == "conv":
            models.append(op_timer.context_model(sig, cin, cout))
        for model in models:
            onnx.checker.check_model(model, full_check=True)
            (y,) = ort.InferenceSession(model.SerializeToString()).run(None, example_feeds(model))
            assert np.isfinite(y).all()
        (y,) = ort.InferenceSession(models[0].SerializeToString()).run(
            None, example_feeds(models[0]))
        assert y.shape[1 if sig["op"] == "conv" else -1] == cout, y.shape
        if sig["op"] == "conv":
            stride = sig["stride"][0]
            assert list(y.shape[2:]) == [8 // stride] * 2, y.shape


def _profile(calls: list[list[tuple[str, int]]]) -> list[dict]:
    """A synthetic onnxruntime profile: one ``model_run`` per call, its kernels (op, µs) one
    after the other."""
    events, ts = [], 0
    for kernels in calls:
        start = ts
        for op, dur in kernels:
            events.append({"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur,
                           "args": {"op_name": op}})
            ts += dur
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts - start})
        ts += 5
    return events


def test_a_layer_in_context_is_charged_what_runs_between_its_neighbours():
    """The op timer times a conv between two neighbours (so it runs in the layout it has in a
    model) and charges it what onnxruntime's profile shows between the first and last compute
    kernel of each call, layout conversions (Reorder) between them included, the neighbours
    not; the mean of the middle half of the calls; only the last ``n`` calls (warm-up runs
    before them do not count). Wall-clock claims (a 64x heavier layer reads many times
    slower) are checked by ``tools/check_op_timer.py``."""
    call = [("Conv", 50), ("ReorderInput", 7), ("Conv", 100), ("ReorderOutput", 3),
            ("Conv", 40)]
    assert op_timer.between_neighbours_ms(_profile([call] * 4), 4) == pytest.approx(0.110)
    # calls of 100, 200, 300, 1000 µs in the middle: the middle half is 200 and 300
    calls = [[("Conv", 9), ("Conv", d), ("Conv", 9)] for d in (1000, 200, 100, 300)]
    warm = [[("Conv", 9), ("Conv", 99999), ("Conv", 9)]] * 2
    assert op_timer.between_neighbours_ms(_profile(warm + calls), 4) == pytest.approx(0.250)
    # a layer fused into a neighbour leaves nothing in between: no figure, an error
    with pytest.raises(RuntimeError, match="no timed layer"):
        op_timer.between_neighbours_ms(_profile([[("Conv", 9), ("ReorderInput", 3)]] * 3), 3)


# -- execution providers ------------------------------------------------------------------------

CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in __import__("onnxruntime").get_available_providers()


def test_provider_names_resolve_and_a_missing_one_is_one_clear_error():
    from idapgraph.runners import providers

    assert providers.resolve("cpu") == providers.resolve("CPUExecutionProvider") == \
        providers.resolve(None) == "CPUExecutionProvider"
    if HAS_CUDA:
        assert providers.resolve("cuda") == CUDA
    else:  # onnxruntime, not onnxruntime-gpu: the error says what is there and what to install
        with pytest.raises(InputError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
            providers.resolve("cuda")
    with pytest.raises(InputError, match="no TPUExecutionProvider"):
        providers.resolve("TPUExecutionProvider")
    assert providers.session_providers(CUDA) == [CUDA, "CPUExecutionProvider"]


def test_a_device_table_has_a_key_of_its_own(tmp_path, monkeypatch):
    """CPU and CUDA timings never share a table: the key names the provider and the device."""
    from idapgraph import latency_target
    from idapgraph.runners import providers

    monkeypatch.setenv("IDAPGRAPH_CACHE", str(tmp_path))
    cpu = latency_target.table_for(1)
    gpu = latency_target.table_for(1, provider=CUDA)
    assert gpu.machine["provider"] == CUDA and gpu.machine["device"] == providers.device_name(CUDA)
    assert "device" not in cpu.machine and cpu.path != gpu.path


def test_io_bound_calls_compute_what_run_computes(monkeypatch):
    """The way a device provider is timed (inputs placed once, outputs bound on the device),
    exercised on the CPU device: the bound call computes the model's outputs, and with the CPU
    made a "device" provider, layers are timed through such a call (alone, not in context),
    less an empty call's overhead."""
    import onnxruntime as ort

    from idapgraph.runners import providers

    sig = {"op": "conv", "spatial": [28, 28], "kernel": [3, 3], "stride": [1, 1],
           "pads": [1, 1, 1, 1], "dilation": [1, 1], "group_in": None, "bias": True, "batch": 1,
           "dtype": "float32"}
    m = op_timer.one_op_model(sig, 16, 32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = example_feeds(m)
    call = providers.io_bound_call(sess, feeds, "cpu")
    np.testing.assert_allclose(call().copy_outputs_to_cpu()[0], sess.run(None, feeds)[0],
                               rtol=1e-5)
    bound, in_context = [], []
    real_bound = providers.io_bound_call

    def spy(sess, feeds, device):
        bound.append(device)
        return real_bound(sess, feeds, device)

    monkeypatch.setattr(providers, "DEVICES", {"CPUExecutionProvider": "cpu"})
    monkeypatch.setattr(providers, "io_bound_call", spy)
    monkeypatch.setattr(op_timer, "time_in_context", lambda *a, **k: in_context.append(a))
    op_timer.call_overhead_ms.cache_clear()
    try:
        ms = op_timer.time_op(sig, 64, 64)
    finally:
        op_timer.call_overhead_ms.cache_clear()
    assert np.isfinite(ms) and not in_context
    # the layer's call and the empty calls the overhead is measured with, all bound
    assert len(bound) >= 2 and set(bound) == {"cpu"}


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: the error path cannot happen")
def test_cli_cuda_without_onnxruntime_gpu_is_one_clear_error(wide_cnn_onnx, tmp_path):
    cli = [sys.executable, "-m", "idapgraph"]
    for args in (["profile", str(wide_cnn_onnx), "--provider", "cuda"],
                 ["compress", str(wide_cnn_onnx), "-o", str(tmp_path / "x.onnx"), "--flops",
                  "0.5", "--bench", "--provider", "cuda"]):
        p = subprocess.run(cli + args, capture_output=True, text=True, timeout=600)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "onnxruntime-gpu" in p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "x.onnx").exists()


# -- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_cnn_onnx(tmp_path_factory):
    """Compute-heavy enough (batch 1, 96×96) that halving latency is not lost in timing noise."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    p = tmp_path_factory.mktemp("lat") / "r18.onnx"
    p.write_bytes(export_onnx(net, (torch.randn(1, 3, 96, 96),)).SerializeToString())
    return p


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One latency-table cache for the end-to-end tests after the first (which fills it)."""
    return tmp_path_factory.mktemp("latcache")


def test_compress_to_a_latency_onnx(wide_cnn_onnx, shared_cache, monkeypatch, cost_clock):
    """On the cost model: the tables are timed once (and cached), the target is met within
    the closed loop's tolerance, and the report's figures are the clock's."""
    from cost_clock import layers_cost

    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    res = idapgraph.compress(str(wide_cnn_onnx), latency=0.5, method="magnitude", heal="none")
    lt = res.report.latency_target
    assert lt["table"]["timed"] == lt["table"]["needed"] == cost_clock.layers > 0
    assert (shared_cache / "latency").is_dir()
    assert lt["solver"] == "highs" and lt["rounds"] and all(r["feasible"] for r in lt["rounds"])
    assert lt["goal_ms"] == pytest.approx(0.5 * lt["before_ms"], rel=1e-3)
    assert lt["before_ms"] == pytest.approx(CostClock.OVERHEAD_MS + layers_cost(
        onnx.load(str(wide_cnn_onnx))), rel=1e-4)
    assert 0.5 * 0.9 <= lt["ratio"] <= 0.5 * 1.1 and res.report.reached
    assert lt["after_ms"] == pytest.approx(CostClock.OVERHEAD_MS + layers_cost(res.model),
                                           rel=1e-4)
    assert res.report.flops_ratio < 0.6
    onnx.checker.check_model(res.model, full_check=True)
    assert res.report.target["latency"] == 0.5 and res.plan.meta["target"]["latency"] == 0.5
    # the table is reused by the next run
    again = idapgraph.compress(str(wide_cnn_onnx), latency=0.7, method="magnitude", heal="none")
    assert again.report.latency_target["table"]["timed"] == 0


def test_compress_to_a_latency_fx(tmp_path, monkeypatch, cost_clock):
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(tmp_path / "cache"))
    net = TwoBlockNet().eval()
    x = torch.randn(1, 3, 32, 32)
    res = idapgraph.compress(net, x, latency=0.6, method="magnitude", heal="none")
    assert isinstance(res.model, torch.fx.GraphModule)
    assert res.model(x).shape == (1, 5)
    lt = res.report.latency_target
    assert lt["rounds"] and cost_clock.models >= 3  # the original, a candidate, the output
    assert lt["ratio"] <= 0.6 * 1.1 and res.report.reached
    assert res.report.units_removed > 0 or res.report.blocks_bypassed


def test_an_unreachable_latency_gives_the_fastest_model_and_says_so(wide_cnn_onnx, shared_cache,
                                                                    monkeypatch, cost_clock):
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    with pytest.warns(UserWarning):
        res = idapgraph.compress(str(wide_cnn_onnx), latency=0.02, method="magnitude",
                                 heal="none", block_gates=False)
    rep = res.report
    assert not rep.reached
    assert any("below the fastest model" in w for w in rep.warnings)
    assert any("latency target 0.02 missed" in w for w in rep.warnings)
    assert all(not r["feasible"] for r in rep.latency_target["rounds"])
    # every group at its floor: nothing more could have been removed
    g = {gr.key: gr.n_units for gr in idapgraph.analyze(str(wide_cnn_onnx)).coupling.groups}
    for key, removed in res.plan.remove.items():
        assert g[key] - len(removed) == lat.group_options(g[key], 1)[0]
    onnx.checker.check_model(res.model, full_check=True)


def test_nothing_to_choose_keeps_the_model_and_says_so(wide_cnn_onnx, shared_cache, monkeypatch, cost_clock):
    """Every group kept (``keep="*"``) and no block gates: the solver has no variable, so the
    unpruned model is the answer, the target reported missed (the MILP once got an empty
    objective and raised from SciPy: GPT-2's TorchScript export has no prunable group)."""
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    with pytest.warns(UserWarning):
        res = idapgraph.compress(str(wide_cnn_onnx), latency=0.5, method="magnitude",
                                 heal="none", block_gates=False, keep="*")
    rep = res.report
    assert not rep.reached and not res.plan.remove and not res.plan.bypass
    assert any("nothing to choose" in n for n in rep.latency_target["notes"])
    assert any("latency target 0.5 missed" in w for w in rep.warnings)
    onnx.checker.check_model(res.model, full_check=True)


def _dead_second_branch(cls) -> onnx.ModelProto:
    """``cls`` (TwoBlockNet or a variant) with its second branch's last conv scaled to almost
    nothing, exported."""
    torch.manual_seed(0)
    net = cls().eval()
    with torch.no_grad():
        net.b2[2].weight.mul_(1e-4)
        net.b2[2].bias.zero_()
    return export_onnx(net, (torch.randn(4, 3, 64, 64),))


def test_a_near_dead_block_is_bypassed_first(shared_cache, monkeypatch, cost_clock):
    """Block weights are measured: a residual branch scaled to almost nothing costs almost no
    calibration error when bypassed, so it goes before channels of the live block do."""
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    proto = _dead_second_branch(TwoBlockNet)
    res = idapgraph.compress(proto, latency=0.7, method="magnitude", heal="none")
    lt = res.report.latency_target
    errs = lt["gate_errors"]
    assert len(errs) == 2 and min(errs.values()) < 1e-6 < max(errs.values())
    dead = min(errs, key=errs.get)
    assert res.plan.bypass == [dead] and res.report.blocks_bypassed == [dead]
    onnx.checker.check_model(res.model, full_check=True)
    # max_error bounds the blocks offered; it never starts stage 2's own search
    none = idapgraph.compress(proto, latency=0.7, method="magnitude", heal="none", blocks=None,
                              max_error=0.0)
    assert none.report.latency_target["gated_blocks"] == 0 and none.report.blocks_bypassed == []


class GrouplessBlockNet(TwoBlockNet):
    """TwoBlockNet whose second branch is a depthwise + pointwise conv on the residual width:
    every channel of it is tied to the residual stream, so it has no channel group of its own."""

    def __init__(self):
        super().__init__()
        self.b2 = nn.Sequential(nn.Conv2d(16, 16, 5, padding=2, groups=16), nn.ReLU(),
                                nn.Conv2d(16, 16, 1))


def test_a_block_without_groups_of_its_own_is_offered(shared_cache, monkeypatch, cost_clock):
    """With measured block weights a block is priced by its bypass error, so one without channel
    groups of its own (attention whose heads are frozen, a depthwise branch on the residual
    width) is gated too: near-dead, it goes first."""
    from idapgraph.latency_target import latency_model, table_for

    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    proto = _dead_second_branch(GrouplessBlockNet)

    a = idapgraph.analyze(proto)
    m, _ = latency_model(a, a.blocks, table_for(1, shared_cache / "groupless.json"),
                         min_keep=0.1, quantum=8)
    assert len(a.blocks) == 2 and len(m.blocks) == 1  # unweighted: the group-less one is not gated
    res = idapgraph.compress(proto, latency=0.8, method="magnitude", heal="none")
    lt = res.report.latency_target
    assert lt["gated_blocks"] == 2
    dead = min(lt["gate_errors"], key=lt["gate_errors"].get)
    assert lt["gate_errors"][dead] < 1e-6 and res.plan.bypass == [dead]
    onnx.checker.check_model(res.model, full_check=True)


class TwinBlockNet(nn.Module):
    """Two residual branches with the same weights, scaled down: their outputs point the same
    way, so bypassing both costs about twice the sum of bypassing each (4 s² against 2 s²)."""

    def __init__(self, scale: float):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.f = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 1))
        self.g = copy.deepcopy(self.f)
        self.scale = scale
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.scale * self.f(x)
        x = x + self.scale * self.g(x)
        return self.head(x.mean((2, 3)))


def test_blocks_bypassed_together_keep_the_error_bound(shared_cache, monkeypatch, cost_clock):
    """Each twin branch alone costs e; both cost about 4e (their errors add up coherently).
    With max_error between 2e (the summed single errors, what the MILP's row allows) and the
    joint 4e, the joint measurement must make the solver keep one of them."""
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    torch.manual_seed(0)
    proto = export_onnx(TwinBlockNet(0.05).eval(), (torch.randn(4, 3, 64, 64),))
    free = idapgraph.compress(proto, latency=0.3, method="magnitude", heal="none", max_error=1.0)
    lt = free.report.latency_target
    singles = lt["gate_errors"]
    assert len(singles) == 2 and sorted(free.report.blocks_bypassed) == sorted(singles)
    joint = [r["bypass_error"] for r in lt["rounds"] if r["bypass_error"] is not None][0]
    summed = sum(singles.values())
    assert joint > 1.5 * summed, (joint, singles)
    bound = (summed + joint) / 2
    held = idapgraph.compress(proto, latency=0.3, method="magnitude", heal="none",
                              max_error=bound)
    lt = held.report.latency_target
    assert len(held.report.blocks_bypassed) == 1, lt["rounds"]
    assert lt["error_cap"] < bound
    for r in lt["rounds"]:
        assert len(r["blocks_bypassed"]) <= 1 and r["bypass_error"] is None
    onnx.checker.check_model(held.model, full_check=True)


@pytest.mark.parametrize("kw, msg", [
    ({"latency": 0}, "(0, 1]"), ({"latency": 1.5}, "(0, 1]"),
    ({"latency": 0.5, "flops": 0.5}, "latency= is a target of its own"),
    ({"latency": 0.5, "threads": 0}, "threads"),
    ({"latency": 0.5, "solver": "cplex"}, "unknown solver"),
    ({"latency": 0.5, "blocks": 2}, "drop blocks="),
    ({"blocks": 1, "measure_groups": True}, "give flops=, params= or latency="),
])
def test_bad_latency_arguments(wide_cnn_onnx, kw, msg):
    with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        idapgraph.compress(str(wide_cnn_onnx), **kw)


def test_cli_profile_then_compress(tmp_path):
    """The CLI end to end on onnxruntime's own clock (no figure asserted: the machine may be
    loaded): tables timed once and cached, then reused by ``compress --latency``."""
    env = {**__import__("os").environ, "IDAPGRAPH_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "idapgraph"]
    torch.manual_seed(0)
    src = tmp_path / "two_block.onnx"
    src.write_bytes(export_onnx(TwoBlockNet().eval(), (torch.randn(1, 3, 32, 32),))
                    .SerializeToString())
    p1 = subprocess.run(cli + ["profile", str(src), "--json"], capture_output=True,
                        text=True, env=env, timeout=600)
    assert p1.returncode == 0, p1.stderr
    r1 = json.loads(p1.stdout)
    assert r1["timed"] == r1["needed"] > 0 and r1["layers"] == 6 and r1["model_ms"] > 0
    p2 = subprocess.run(cli + ["profile", str(src)], capture_output=True, text=True,
                        env=env, timeout=600)
    assert p2.returncode == 0 and "0 timed now" in p2.stdout, p2.stdout
    out = tmp_path / "small.onnx"
    p3 = subprocess.run(cli + ["compress", str(src), "-o", str(out), "--latency", "0.6",
                               "--method", "magnitude", "--heal", "none", "--json"],
                        capture_output=True, text=True, env=env, timeout=600)
    assert p3.returncode == 0, p3.stderr
    rep = json.loads(p3.stdout)
    schemas.check(rep, schemas.COMPRESS)
    assert rep["latency_target"]["table"]["timed"] == 0
    assert "latency target 0.6:" in p3.stderr and "latency (ms, in turns)" in p3.stderr
    onnx.checker.check_model(str(out), full_check=True)
    p4 = subprocess.run(cli + ["compress", str(src), "-o", str(tmp_path / "x.onnx"),
                               "--latency", "0.5", "--flops", "0.5"], capture_output=True,
                        text=True, env=env, timeout=600)
    assert p4.returncode == 2 and len(p4.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_measured_group_losses_drive_the_selection(shared_cache, monkeypatch, cost_clock):
    """``measure_groups``: every channel group is cut to a quarter, half and three quarters of
    its units (least-squares healed) and the calibration error measured; the report has each
    group's losses, fewer units never measured as costing nothing, and the plan meets the
    target. Whether the measured weighting beats the default at equal latency is the
    benchmark ``tools/bench_latency_mnist.py --measure-groups`` (``--clock cost`` for the
    deterministic cost model; BENCHMARKS.md)."""
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    torch.manual_seed(0)
    proto = export_onnx(TwoBlockNet().eval(), (torch.randn(4, 3, 32, 32),))
    a = idapgraph.analyze(proto)
    res = idapgraph.compress(proto, latency=0.5, method="magnitude", heal="none",
                             measure_groups=True)
    lt = res.report.latency_target
    losses = lt["group_losses"]
    assert set(losses) == {g.key for g in a.coupling.groups}
    for g in a.coupling.groups:
        counts = sorted(int(k) for k in losses[g.key])
        assert len(counts) >= 2 and counts[-1] < g.n_units, (g.key, counts)
        assert all(losses[g.key][str(c)] >= 0 for c in counts)
        assert losses[g.key][str(counts[0])] > 0  # a quarter of the units kept costs something
    assert lt["ratio"] <= 0.5 * 1.1 and res.report.reached
    default = idapgraph.compress(proto, latency=0.5, method="magnitude", heal="none")
    assert default.report.latency_target["group_losses"] is None  # no calibration data
    # with calibration data and least-squares healing the default measures (on 16 samples)
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    measured = idapgraph.compress(proto, latency=0.5, calib=calib)
    assert set(measured.report.latency_target["group_losses"]) == set(losses)


class TokenMLP(nn.Module):
    """Two residual token MLPs over ``[batch, sequence, 64]``, pooled over the sequence."""

    def __init__(self, d: int = 64, hidden: int = 256):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(),
                                                  nn.Linear(hidden, d)) for _ in range(2))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean(1))


@pytest.fixture(scope="module")
def token_mlp_onnx():
    torch.manual_seed(0)
    return export_onnx(TokenMLP(), (torch.randn(1, 8, 64),), input_names=["x"],
                       dynamic_axes={"x": {0: "batch", 1: "sequence"}})


def test_symbolic_dims_are_timed_at_the_given_sizes(token_mlp_onnx, shared_cache, monkeypatch,
                                                    tmp_path, cost_clock):
    """``dims``: a symbolic sequence axis counts as 1 unless given a size. At ``sequence=256``
    the tables and the whole model are timed on 256 rows (on the cost model: 256 times the
    work), the latency target is met on that size and the output keeps its dims symbolic (it
    runs at any length); ``--bench`` times at the same sizes; bad ``dims`` are one clear error
    each (API, and the CLI's exit 2)."""
    from idapgraph.frontends.onnx_dims import input_dims

    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    assert input_dims(token_mlp_onnx) == ["batch", "sequence"]
    one = idapgraph.profile(token_mlp_onnx)
    long = idapgraph.profile(token_mlp_onnx, dims={"sequence": 256})
    assert long["dims"] == {"sequence": 256} and one["dims"] == {}
    assert long["tables_ms"] == pytest.approx(256 * one["tables_ms"], rel=0.02)  # 4 decimals
    layers_ms = [p["model_ms"] - CostClock.OVERHEAD_MS for p in (one, long)]
    assert layers_ms[1] == pytest.approx(256 * layers_ms[0], rel=0.02)
    res = idapgraph.compress(token_mlp_onnx, latency=0.5, method="magnitude", heal="none",
                             dims={"sequence": 256})
    lt = res.report.latency_target
    assert lt["dims"] == {"sequence": 256}
    assert lt["before_ms"] == pytest.approx(long["model_ms"], rel=1e-3)
    assert 0.5 * 0.9 <= lt["ratio"] <= 0.5 * 1.1, lt
    out = res.model
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim[:2]] == \
        ["batch", "sequence"]
    onnx.checker.check_model(out, full_check=True)
    import onnxruntime as ort

    y = ort.InferenceSession(out.SerializeToString()).run(
        None, {"x": np.random.default_rng(0).standard_normal((2, 17, 64)).astype(np.float32)})[0]
    assert y.shape == (2, 10)
    for kw, msg in ((dict(latency=0.5, dims={"seq": 64}), "no symbolic dim 'seq'"),
                    (dict(latency=0.5, dims={"sequence": 0}), "integer >= 1"),
                    (dict(flops=0.5, dims={"sequence": 256}), "give latency= too")):
        with pytest.raises(InputError, match=msg):
            idapgraph.compress(token_mlp_onnx, method="magnitude", **kw)
    with pytest.raises(InputError, match="torch module"):
        idapgraph.compress(TokenMLP(), (torch.randn(1, 8, 64),), latency=0.5,
                           dims={"sequence": 256})
    path = tmp_path / "tok.onnx"
    onnx.save(token_mlp_onnx, path)
    cli = [sys.executable, "-m", "idapgraph"]
    for args, msg in ((["--latency", "0.5", "--dims", "sequence"], "NAME=N"),
                      (["--latency", "0.5", "--dims", "seq=4"], "no symbolic dim 'seq'"),
                      (["--flops", "0.5", "--dims", "sequence=4"], "--latency and --bench")):
        p = subprocess.run(cli + ["compress", str(path), "-o", str(tmp_path / "o.onnx"), *args],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 2 and msg in p.stderr and not (tmp_path / "o.onnx").exists(), \
            p.stderr
        assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) <= 2, p.stderr
    # --bench times the input and the output at the same sizes (the shapes they are run on
    # recorded instead of timed)
    from idapgraph import cli as cli_module
    from idapgraph.emit.validate import example_feeds as feeds_of
    from idapgraph.runners import bench

    shapes = []

    def fake_times(models, feeds_list, runs, *a, **k):
        shapes.extend(tuple(v.shape) for m in models for v in feeds_of(m).values())
        return [[1.0] * runs for _ in models]

    monkeypatch.setattr(bench, "_times", fake_times)
    assert cli_module.main(["compress", str(path), "-o", str(tmp_path / "o.onnx"), "--flops", "0.5",
                            "--method", "magnitude", "--bench", "--dims", "sequence=256",
                            "--json"]) == 0
    assert shapes == [(1, 256, 64), (1, 256, 64)]


def test_a_transformer_module_compresses_to_a_latency(shared_cache, monkeypatch, cost_clock):
    """A torch module traced through ``torch.export`` (BERT) is timed through the dynamo
    exporter (the TorchScript one cannot put such a module in eval mode), and its fx graph's
    constant nodes are not mistaken for timed layers (an IndexError before)."""
    import zoo

    monkeypatch.setenv("IDAPGRAPH_CACHE", str(shared_cache))
    model, example = zoo.build("hf_bert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = idapgraph.compress(model, example, latency=0.7)
    info = r.report.latency_target
    assert r.report.reached and info["ratio"] <= 0.7 * 1.1, info["ratio"]
    assert r.report.units_removed > 0 or r.report.blocks_bypassed
    r.model(*example)
