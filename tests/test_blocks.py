"""Stage 2: residual-block detection, bypass on both backends, layer truncation."""

from __future__ import annotations

import json
import operator
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import idapgraph
from helpers import example_feeds, export_onnx, onnx_out, rel_err, torch_out
from idapgraph.passes import blocks
from mnist_cnn import accuracy, calibration, trained
from zoo import build


def residual_adds_onnx(p: onnx.ModelProto) -> int:
    init = {t.name for t in p.graph.initializer}
    return sum(1 for n in p.graph.node if n.op_type == "Add" and not (set(n.input) & init))


def residual_adds_fx(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.target is operator.add
               and all(getattr(a, "op", "") not in ("get_attr", "") for a in n.args))


@pytest.mark.parametrize("name,kinds", [
    ("tv_resnet18", ["residual"] * 8), ("tv_resnet50", ["residual"] * 16),
    ("tv_mobilenet_v2", ["residual"] * 10),
    ("hf_bert", ["attention", "mlp"] * 2 + ["layer"] * 2),
    ("hf_gpt2", ["attention", "mlp"] * 2 + ["layer"] * 2)])
def test_detection_same_on_both_backends(name, kinds):
    model, args = build(name)
    kf = blocks.find(idapgraph.analyze(model, args).graph)
    ko = blocks.find(idapgraph.analyze(export_onnx(model, args)).graph)
    assert [b.kind for b in kf] == [b.kind for b in ko] == kinds
    assert [b.key for b in kf] == [b.key for b in ko]


def test_zeroed_branch_is_bypassed_without_change():
    model, args = build("tv_resnet18")
    with torch.no_grad():  # block b3 (layer2[1]) now adds exactly zero
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    plan = idapgraph.Plan(bypass=["b3"])
    out = idapgraph.apply_plan(model, plan, args)
    assert rel_err(torch_out(model, args)[0], torch_out(out, args)[0]) < 1e-6
    assert residual_adds_fx(out) == 7
    proto = export_onnx(model, args)
    out2 = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(out2, full_check=True)
    feeds = example_feeds(proto)
    assert rel_err(onnx_out(proto, feeds)[0], onnx_out(out2, feeds)[0]) < 1e-6
    assert residual_adds_onnx(out2) == residual_adds_onnx(proto) - 1
    # the truncation pass finds that block first: its relative change is 0
    r = idapgraph.compress(proto, blocks=1, heal="none")
    assert r.report.blocks_bypassed == ["b3"]


@pytest.fixture(scope="module")
def mnist():
    model = trained()
    x = (torch.randn(1, 1, 28, 28),)
    return model, x, export_onnx(model, x), calibration()


# BENCHMARKS.md, "Layer truncation on the same MNIST CNN": --blocks 2 on the unpruned CNN (97.15 %)
# keeps 32.2 % top-1 with mean substitution (stats, and the torch module's default) and 26.4 %
# with --heal none; asserted to be no more than 3 points below (2,000 test images)
BLOCKS_2_ACC = {"stats": 0.322, "none": 0.264}
ACC_MARGIN = 0.03


def test_cli_blocks_2_on_onnx(mnist, tmp_path):
    _, _, proto, cal = mnist
    acc, err = {}, {}
    src = tmp_path / "m.onnx"
    onnx.save(proto, src)
    np.savez(tmp_path / "cal.npz", x=cal)
    for heal in ("stats", "none"):
        out = tmp_path / f"o_{heal}.onnx"
        r = subprocess.run([sys.executable, "-m", "idapgraph", "compress", str(src), "-o", str(out),
                            "--blocks", "2", "--heal", heal, "--calib", str(tmp_path / "cal.npz"),
                            "--json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert len(rep["blocks_bypassed"]) == 2
        small = onnx.load(out)
        onnx.checker.check_model(small, full_check=True)
        assert residual_adds_onnx(small) == residual_adds_onnx(proto) - 2
        if heal == "none":  # without mean substitution the Add disappears altogether
            assert sum(n.op_type == "Add" for n in small.graph.node) == \
                sum(n.op_type == "Add" for n in proto.graph.node) - 2
        acc[heal], err[heal] = accuracy(small), _output_error(proto, small, cal)
        print(heal, "accuracy with 2 blocks bypassed:", acc[heal], rep["flops_ratio"])
        assert acc[heal] >= BLOCKS_2_ACC[heal] - ACC_MARGIN, acc
        assert rep["flops_ratio"] == pytest.approx(0.643, abs=0.005)
    # mean substitution brings the outputs closer to the original's on the calibration data
    # (0.68 against 0.74 on one machine's training). Top-1 on 2,000 images is too noisy to
    # order the two: 32.2 / 26.4 % on one training, 53.4 / 54.4 % on another.
    assert err["stats"] < err["none"], (err, acc)


def test_fx_blocks_2_and_accuracy(mnist):
    model, x, _, cal = mnist
    r = idapgraph.compress(model, x, blocks=2, calib=cal)
    assert len(r.report.blocks_bypassed) == 2
    assert residual_adds_fx(r.model) == residual_adds_fx(torch.fx.symbolic_trace(model)) - 2
    assert r.report.flops_after < r.report.flops_before
    acc = accuracy(r.model)
    print("fx accuracy with 2 blocks bypassed:", acc)  # 6 blocks only, each matters
    assert acc >= BLOCKS_2_ACC["stats"] - ACC_MARGIN  # as the ONNX route
    assert set(r.report.block_scores) == set(r.report.blocks_bypassed)


def _output_error(proto, small, cal) -> float:
    """‖N₀ − N‖² / ‖N₀‖² over ``cal``, measured in onnxruntime."""
    from idapgraph.emit.validate import session

    ref, got = session(proto), session(small)
    name = ref.get_inputs()[0].name
    num = den = 0.0
    for i in range(len(cal)):
        a = ref.run(None, {name: cal[i:i + 1]})[0].astype(np.float64)
        b = got.run(None, {name: cal[i:i + 1]})[0].astype(np.float64)
        num += float(((a - b) ** 2).sum())
        den += float((a * a).sum())
    return num / den


def test_max_error_bound_holds(mnist):
    model, x, proto, cal = mnist
    # each block changes its input by ~90 %: the first bypass alone costs 0.42 of the output on
    # one machine's training, 0.68 on another's (the trained weights follow the CPU's kernels),
    # two bypasses more. A bound 10 % above the first bypass's cost lets that one go (0.05, as
    # once, let none: the check was vacuous), and the bound must still hold for what goes.
    first = idapgraph.compress(proto, blocks=1, calib=cal, heal="none")
    bound = 1.1 * _output_error(proto, first.model, cal)
    r = idapgraph.compress(proto, blocks=None, max_error=bound, calib=cal, heal="none")
    assert 0 < _output_error(proto, r.model, cal) <= bound + 1e-9
    # some blocks went, and the bound stopped it before every block was gone
    assert 1 <= len(r.report.blocks_bypassed) < 6, r.report.blocks_bypassed


def test_plan_with_bypass_roundtrips(mnist):
    model, x, proto, cal = mnist
    r = idapgraph.compress(proto, flops=0.7, blocks=1, calib=cal, heal="none")
    plan = idapgraph.Plan.from_json(r.plan.to_json())
    assert plan.bypass == r.report.blocks_bypassed
    again = idapgraph.apply_plan(proto, plan)
    feeds = {proto.graph.input[0].name: cal[:1]}
    assert rel_err(onnx_out(r.model, feeds)[0], onnx_out(again, feeds)[0]) < 1e-5
    fx = idapgraph.apply_plan(model, plan, x)
    assert rel_err(torch_out(fx, (torch.from_numpy(cal[:1]),))[0], onnx_out(again, feeds)[0]) < 1e-4


def test_measured_block_score_is_greedy_by_output_error():
    """``block_score="measured"`` (SLEB-style) bypasses first the block whose removal alone
    changes the calibration outputs least, found here by trying each block by hand."""
    model, args = build("tv_resnet18")
    cal = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    small = (cal[0][:1],)
    r = idapgraph.compress(model, small, calib=cal, blocks=1, block_score="measured", heal="none")
    ref = [torch_out(model, (x,))[0] for x in cal]

    def error(key):
        out = idapgraph.apply_plan(model, idapgraph.Plan(bypass=[key]), small)
        return sum(float(((torch_out(out, (x,))[0] - y) ** 2).sum()) for x, y in zip(cal, ref))

    errors = {b.key: error(b.key) for b in blocks.find(idapgraph.analyze(model, small).graph)}
    assert r.report.blocks_bypassed == [min(errors, key=errors.get)], errors
    assert r.report.block_scores[r.report.blocks_bypassed[0]] == pytest.approx(
        min(errors.values()) / sum(float((y ** 2).sum()) for y in ref), rel=1e-3)


def test_bypassed_variants_share_weights_but_never_the_inputs():
    """Layer removal's variants share their weights with the model they come from
    (``emit.fx.bypass``: no copy per candidate), while the compressed model shares no storage
    with the user's module, and training it leaves the input unchanged."""
    from idapgraph.emit.fx import bypass
    from idapgraph.stages.truncate import bypass_arg

    model, args = build("tv_resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    r = idapgraph.compress(model, (cal[:1],), calib=cal, blocks=2, block_score="measured")
    assert len(r.report.blocks_bypassed) == 2
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in r.model.parameters()}
    with torch.no_grad():
        for p in r.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    a = idapgraph.analyze(model, (cal[:1],))
    b = next(iter(blocks.find(a.graph)))
    gm = a.model.source
    variant = bypass(gm, [bypass_arg(a.graph, b, None, {})])
    kept = {p.data_ptr() for p in gm.parameters()}
    assert {p.data_ptr() for p in variant.parameters()} < kept  # a subset: the branch is gone
