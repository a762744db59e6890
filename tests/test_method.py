"""The IDAP++ method on a CNN trained here on real MNIST: divergence annotation parity across
backends, accuracy against the baselines after the same healing, healing exactness."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import idapgraph
from helpers import ResidualBranches, export_onnx, onnx_out, rel_err
from idapgraph.passes import heal
from idapgraph.ir.ops import weighted_nodes
from mnist_cnn import accuracy, calibration, trained

X = (torch.randn(1, 1, 28, 28),)


@pytest.fixture(scope="module")
def net():
    model = trained()
    return model, export_onnx(model, X), calibration()


def test_trained_reference(net):
    model, proto, _ = net
    assert accuracy(model) > 0.95
    assert abs(accuracy(proto) - accuracy(model)) < 1e-3


def test_divergence_same_on_both_backends(net):
    model, proto, cal = net
    af = idapgraph.analyze(model, X, calib=cal)
    ao = idapgraph.analyze(proto, calib=cal)
    names_f = [n.name for n in weighted_nodes(af.graph)]
    names_o = [n.name for n in weighted_nodes(ao.graph)]
    assert len(names_f) == len(names_o)
    compared = 0
    for nf, no in zip(names_f, names_o):
        if nf in af.divergence:
            a, b = af.divergence[nf], ao.divergence[no]
            assert np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)) < 1e-4, nf
            compared += 1
    assert compared >= 10
    for key, s in af.group_scores.items():
        np.testing.assert_allclose(s, ao.group_scores[key], rtol=1e-4)


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_idap_beats_baselines_at_half_flops(net, backend):
    """No fine-tuning; every method gets the same statistics-matching healing (the cheaper
    healer keeps this six-compression test fast; the default healer is tested below)."""
    model, proto, cal = net
    src, ex = (model, X) if backend == "fx" else (proto, None)
    acc = {}
    for method in ("idap", "magnitude", "random"):
        r = idapgraph.compress(src, ex, flops=0.5, method=method, calib=cal, seed=0, heal="stats")
        assert r.report.flops_ratio <= 0.5 + 1e-9 and r.report.heal["kept"]
        acc[method] = accuracy(r.model)
        # per-layer records; the stem conv reads the unpruned image, so the statistics of its
        # kept channels are unchanged: an identity correction (scale 1, shift 0 within 1e-6)
        first = r.report.heal["corrections"][0]
        assert first["kind"] == "affine" and "stem" in first["layer"]
        assert abs(first["scale_min"] - 1) <= 1e-6 and abs(first["scale_max"] - 1) <= 1e-6
        assert first["shift_max"] <= 1e-6
        assert any(c["scale_max"] - c["scale_min"] > 0.01 for c in r.report.heal["corrections"])
    print(backend, acc)
    assert acc["idap"] >= acc["magnitude"] and acc["idap"] >= acc["random"], acc
    assert acc["idap"] > 0.85, acc


def test_healing_recovers_accuracy(net):
    model, _, cal = net
    raw = idapgraph.compress(model, X, flops=0.5, calib=cal, heal="none")
    healed = idapgraph.compress(model, X, flops=0.5, calib=cal, heal="stats")
    assert raw.plan.remove == healed.plan.remove
    assert accuracy(healed.model) > accuracy(raw.model) + 0.3
    h = healed.report.heal
    assert h["kept"] and h["error_after"] < h["error_before"] and h["layers"] > 0


def test_batchnorm_reestimation_heals(net):
    """heal="bn": every BatchNorm's running statistics become the pruned model's own on the
    calibration data (what a train-mode pass with momentum=None computes), the healed model
    beats the unhealed one, and an ONNX export (BatchNorm folded away) is refitted instead."""
    model, proto, cal = net
    raw = idapgraph.compress(model, X, flops=0.5, calib=cal, heal="none")
    bn = idapgraph.compress(model, X, flops=0.5, calib=cal, heal="bn")
    assert raw.plan.remove == bn.plan.remove
    h = bn.report.heal
    assert h["method"] == "bn" and h["kept"] and h["layers"] > 0
    assert all(c["kind"] == "renorm" for c in h["corrections"])
    assert accuracy(bn.model) > accuracy(raw.model) + 0.3
    ref = copy.deepcopy(raw.model)
    norms = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    ref.train()
    with torch.no_grad():
        ref(torch.from_numpy(cal))
    got = dict(bn.model.named_buffers())
    for name, b in ref.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(got[name], b, rtol=2e-3, atol=2e-4)
    folded = idapgraph.compress(proto, plan=bn.plan, calib=cal, heal="bn")
    assert folded.report.heal["kept"] and "least-squares" in " ".join(folded.report.heal["notes"])


def test_default_healing_within_two_points_on_both_backends(net):
    """Issue 9's bar: training-free at 0.5 FLOPs, the default method and healing (least-squares
    reconstruction) stay within 2 points of the original, on the torch module and on its
    BN-folded ONNX export given the same plan (within 1 point of each other)."""
    model, proto, cal = net
    rf = idapgraph.compress(model, X, flops=0.5, calib=cal)
    ro = idapgraph.compress(proto, plan=rf.plan, calib=cal)
    base, af, ao = accuracy(model), accuracy(rf.model), accuracy(ro.model)
    print(f"original {base:.4f}, fx {af:.4f}, onnx {ao:.4f}")
    assert rf.report.heal["method"] == "lsq" and rf.report.heal["kept"]
    assert rf.report.flops_ratio <= 0.5 + 1e-9
    assert af >= base - 0.02 and ao >= base - 0.02
    assert abs(af - ao) <= 0.01


def test_identity_correction_when_statistics_are_unchanged():
    rng = np.random.default_rng(0)
    ref = heal.ChannelStats({("y", 1)})
    for _ in range(3):
        ref({"y": rng.standard_normal((4, 6, 5, 5)) * 3 + 1})
    site = heal.Site("n", "y", 1, "w", 0, "b", None)
    (c,) = heal.corrections([site], ref, ref)
    np.testing.assert_allclose(c.scale, 1.0, atol=1e-6)
    np.testing.assert_allclose(c.shift, 0.0, atol=1e-6)


def test_near_zero_variance_channel_is_left_alone():
    ref, cur = heal.ChannelStats({("y", 1)}), heal.ChannelStats({("y", 1)})
    v = np.random.default_rng(0).standard_normal((8, 3, 4))
    w = v.copy()
    w[:, 1] = 2.0  # constant in the pruned model
    ref({"y": v})
    cur({"y": w})
    (c,) = heal.corrections([heal.Site("n", "y", 1, "w", 0, None, None)], ref, cur)
    assert c.scale[1] == 1.0 and c.shift[1] == 0.0


def test_iterative_schedule_runs_steps(net):
    model, _, cal = net
    r = idapgraph.compress(model, X, flops=0.6, calib=cal[:64], base=0.1, steps=5)
    assert len(r.report.steps) >= 2 and r.report.reached
    fr = [s["fraction"] for s in r.report.steps]
    assert fr == sorted(fr)  # p_t = base·(1+t/T)^alpha grows


def test_no_calibration_warns(net):
    model, _, _ = net
    with pytest.warns(UserWarning, match="no calibration data"):
        r = idapgraph.compress(model, X, flops=0.7)
    assert r.report.calibration == "random"


def test_taylor_needs_torch(net):
    _, proto, cal = net
    with pytest.raises(idapgraph.InputError, match="taylor"):
        idapgraph.compress(proto, flops=0.5, method="taylor", calib=cal)
    model = net[0]
    r = idapgraph.compress(model, X, flops=0.5, method="taylor", calib=cal)
    assert r.report.flops_ratio <= 0.5 + 1e-9


def test_cli_calibration_file(net, tmp_path):
    import subprocess
    import sys

    _, proto, cal = net
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(proto, src)
    np.savez(tmp_path / "cal.npz", anything=cal[:32])
    r = subprocess.run([sys.executable, "-m", "idapgraph", "compress", str(src), "-o",
                        str(tmp_path / "o.onnx"), "--flops", "0.5", "--calib",
                        str(tmp_path / "cal.npz"), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    rep = json.loads(r.stdout)
    assert rep["calibration"] == "data" and rep["heal"]["kept"]
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 28, 28), dtype=np.float32))
    r = subprocess.run([sys.executable, "-m", "idapgraph", "compress", str(src), "-o",
                        str(tmp_path / "o2.onnx"), "--flops", "0.5", "--calib",
                        str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o2.onnx").exists()
    r = subprocess.run([sys.executable, "-m", "idapgraph", "analyze", str(src), "--calib",
                        str(tmp_path / "cal.npz"), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["divergence"]


class _ConstChannel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 1)
        self.b = torch.nn.Conv2d(8, 6, 1)
        self.fc = torch.nn.Linear(6 * 4 * 4, 5)
        with torch.no_grad():  # channel 5 of a's output is the constant relu(2.0) = 2
            self.a.weight[5] = 0
            self.a.bias[5] = 2.0

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.b(torch.relu(self.a(x)))), 1))


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_constant_channel_removed_with_zero_change(backend):
    """Bias compensation is exact when the removed channel is constant on the calibration data."""
    from helpers import onnx_out, rel_err, torch_out

    torch.manual_seed(0)
    model = _ConstChannel().eval()
    x = (torch.randn(1, 3, 4, 4),)
    cal = torch.randn(16, 3, 4, 4)
    src, ex = (model, x) if backend == "fx" else (export_onnx(model, x), None)
    key = "w0.out"  # conv a's output channels; unit index = channel index
    plan = idapgraph.Plan(remove={key: [5]})
    exact = idapgraph.compress(src, ex, plan=plan, calib=cal, heal="bias")
    plain = idapgraph.compress(src, ex, plan=plan, calib=cal, heal="none")
    probe = (torch.randn(1, 3, 4, 4),)
    if backend == "fx":
        ref, got, raw = (torch_out(m, probe)[0] for m in (model, exact.model, plain.model))
    else:
        feeds = {src.graph.input[0].name: probe[0].numpy()}
        ref, got, raw = (onnx_out(m, feeds)[0] for m in (src, exact.model, plain.model))
    assert rel_err(ref, raw) > 1e-3  # removing the channel does change the output
    assert rel_err(ref, got) < 1e-5  # … unless its constant contribution moves into the bias
    assert exact.report.heal["kept"]


class _Redundant(torch.nn.Module):
    """A's 6th output is exactly the sum of its first two (weights and bias), so the layer after
    can do without it: least-squares reconstruction must find that."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 6), torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(6, 8, generator=g))
            self.a.bias.copy_(torch.randn(6, generator=g))
            self.a.weight[5] = self.a.weight[0] + self.a.weight[1]
            self.a.bias[5] = self.a.bias[0] + self.a.bias[1]

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_lsq_reconstructs_a_redundant_channel_exactly(backend):
    torch.manual_seed(0)
    model, x = _Redundant().eval(), torch.randn(4, 8)
    cal = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    src = model if backend == "fx" else export_onnx(model, (x,))
    ex = (x,) if backend == "fx" else None
    plan = idapgraph.Plan(remove={"w0.out": [5]}, units={"w0.out": 6})
    raw = idapgraph.compress(src, ex, plan=plan, calib=cal, heal="none")
    fit = idapgraph.compress(src, ex, plan=plan, calib=cal, heal="lsq")
    assert fit.report.heal["kept"] and fit.report.heal["layers"] == 1
    test = np.random.default_rng(1).standard_normal((4, 8)).astype(
        np.float32)
    want = model(torch.from_numpy(test)).detach().numpy()
    if backend == "fx":
        got_raw, got = (m(torch.from_numpy(test)).detach().numpy() for m in (raw.model, fit.model))
    else:
        got_raw, got = (onnx_out(m, {m.graph.input[0].name: test})[0] for m in (raw.model, fit.model))
    assert rel_err(want, got_raw) > 0.05  # removing the channel did matter
    assert rel_err(want, got) < 1e-3


@pytest.mark.parametrize("name,backend", [("resnet18_32px", "fx"), ("hf_bert", "fx"),
                                          ("resnet18_32px", "onnx"), ("hf_bert", "onnx")])
def test_stepped_refit_equals_one_pass_per_layer(name, backend, monkeypatch):
    """Least-squares healing steps the pruned and the original model together, layer by layer
    (one calibration pass of each; ONNX by graph segments); it must give the model that one
    whole pass per refitted layer gives -- also on a torch.export graph, which reads every
    parameter up front (the refit is written into those tensors, not beside them). Both runs
    refit the same layers, the ones that lost channels (the fallback's own choice: a pass per
    drifted layer too would take minutes here)."""
    import warnings

    import zoo
    from idapgraph.backends import Model
    from idapgraph.passes import reconstruct

    lost_only = reconstruct.sites
    monkeypatch.setattr(reconstruct, "sites", lambda g, r, drifted=True, wide=None: lost_only(g, r, False, wide))

    if name == "hf_bert":
        model, example = zoo.build(name)
    else:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval()
        example = (torch.randn(1, 3, 32, 32),)
    src = model if backend == "fx" else export_onnx(model, example)
    ex = example if backend == "fx" else None
    kw = dict(flops=0.6, heal="lsq", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stepped = idapgraph.compress(src, ex, **kw)
        kind = type(idapgraph.load(src, ex))
        monkeypatch.setattr(kind, "stepper", Model.stepper)  # the backend's fallback
        passes = idapgraph.compress(src, ex, **kw)
    h1, h2 = stepped.report.heal, passes.report.heal
    assert h1["kept"] and h1["layers"] > 0 and h1["corrections"] == h2["corrections"]
    assert h1["error_after"] == pytest.approx(h2["error_after"], rel=1e-6)
    if backend == "fx":
        with torch.no_grad():
            a, b = stepped.model(*example), passes.model(*example)
        pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
        assert all(torch.equal(x, y) for x, y in pairs)
    else:
        from helpers import example_feeds

        feeds = example_feeds(src)
        for x, y in zip(onnx_out(stepped.model, feeds), onnx_out(passes.model, feeds)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_sensitive_coarse_group_is_cut_last(backend):
    """Scores are normalised within each group, so a group whose smallest allowed cut is a
    large share of it is measured first: the stream (8 of 16 channels move the calibration
    outputs by more than PROTECT_ERROR and OUTLIER times the median measured group) ranks after
    the branches' units. At 0.8 FLOPs only branches are cut; at 0.3, which the branches alone
    cannot reach, the stream is cut too (ranked last, not frozen). Without real calibration
    data nothing is measured. The guard belongs to the scores-only selection
    (``measure_groups=False``; the default with calibration data measures every group)."""
    from idapgraph.stages import select

    model, x = ResidualBranches().eval(), (torch.randn(1, 3, 8, 8),)
    cal = torch.randn(64, 3, 8, 8)
    src, ex = (model, x) if backend == "fx" else (export_onnx(model, x), None)
    stream = "w0.out"
    r = idapgraph.compress(src, ex, flops=0.8, calib=cal, measure_groups=False)
    assert set(r.report.protected) == {stream}
    assert r.report.protected[stream] > select.PROTECT_ERROR
    assert stream not in r.plan.remove and r.plan.remove
    deep = idapgraph.compress(src, ex, flops=0.3, calib=cal, measure_groups=False)
    assert deep.report.reached and len(deep.plan.remove[stream]) == 8
    with pytest.warns(UserWarning, match="no calibration data"):
        blind = idapgraph.compress(src, ex, flops=0.8)
    assert blind.report.protected == {}
