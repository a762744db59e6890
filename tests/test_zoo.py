"""Zoo coverage on fx and the TorchScript ONNX export (dynamo: ``test_zoo_dynamo.py``): every emitted model is valid, smaller, and equal to the
original with the removed channels zeroed (zero-then-remove equivalence)."""

from __future__ import annotations

import pytest
import torch

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, torch_out
from zoo import ALL, build
from zoo_checks import check_onnx_route, check_report
from zoo_checks import feeds as _feeds


@pytest.mark.parametrize("name", ALL)
def test_fx(name):
    model, args = build(name)
    r = idapgraph.compress(model, args, flops=0.6, method="random", heal="none")
    check_report(r, name)
    assert isinstance(r.model, torch.fx.GraphModule)
    zero = idapgraph.apply_plan(model, r.plan, args, mode="zero")
    ref = torch_out(model, args)
    got, want = torch_out(r.model, args), torch_out(zero, args)
    assert [g.shape for g in got] == [w.shape for w in ref]
    assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-4


# the TorchScript exports of the four heaviest models (together 3 CPU-minutes) run in
# `make test-all`, not in the default suite: their dynamo exports are (test_zoo_dynamo.py)
HEAVY_TS = {"tv_swin_t", "tv_vgg11_bn", "tv_vit_b_16", "seg_fcn_resnet50"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_TS
                                  else n for n in ALL])
def test_onnx_torchscript(name):
    check_onnx_route(name, "ts")


@pytest.mark.parametrize("name", ["tv_resnet50", "tv_mobilenet_v3_small", "tv_densenet121",
                                  "tv_inception_v3", "tv_regnet_y_400mf", "tv_efficientnet_b0",
                                  "tv_squeezenet1_1", "timm_resnet18"])
def test_cross_backend_same_plan(name):
    """A plan made on the fx module applies to the ONNX export and gives the same outputs."""
    model, args = build(name)
    r = idapgraph.compress(model, args, flops=0.5, method="magnitude", heal="none")
    proto = export_onnx(model, args)
    pruned = idapgraph.apply_plan(proto, r.plan)
    a = torch_out(r.model, args)[0]
    b = onnx_out(pruned, _feeds(proto, args))[0]
    assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "tv_shufflenet_v2_x1_0"])
def test_identity_at_flops_one(name):
    model, args = build(name)
    r = idapgraph.compress(model, args, flops=1.0)
    assert r.plan.n_removed == 0
    assert rel_err(torch_out(model, args)[0], torch_out(r.model, args)[0]) < 1e-5
    proto = export_onnx(model, args)
    ro = idapgraph.compress(proto, flops=1.0)
    feeds = _feeds(proto, args)
    assert rel_err(onnx_out(proto, feeds)[0], onnx_out(ro.model, feeds)[0]) < 1e-5
