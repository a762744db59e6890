"""Frontend details: opsets, counting parity between frontends, the documented pass API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from onnx import version_converter

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, example_feeds
from zoo import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("opset", [13, 15, 17, 19, 21])
def test_opsets(opset):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 96, 96)
    if opset <= 17:
        proto = export_onnx(model, (x,), opset=opset)
    else:
        proto = version_converter.convert_version(export_onnx(model, (x,), opset=17), opset)
    assert proto.opset_import[0].version == opset
    r = idapgraph.compress(proto, flops=0.5, method="random", heal="none")
    assert r.report.params_after < r.report.params_before
    assert r.model.opset_import[0].version == opset
    zero = idapgraph.apply_plan(proto, r.plan, mode="zero")
    feeds = example_feeds(proto)
    assert rel_err(onnx_out(zero, feeds)[0], onnx_out(r.model, feeds)[0]) < 1e-4


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "tv_efficientnet_b0",
                                  "tv_densenet121", "timm_resnet18"])
def test_cost_equal_across_frontends(name):
    model, args = build(name)
    fx_cost = idapgraph.analyze(model, args).cost
    onnx_cost = idapgraph.analyze(export_onnx(model, args)).cost
    assert abs(onnx_cost.flops / fx_cost.flops - 1) < 0.01
    assert abs(onnx_cost.params / fx_cost.params - 1) < 0.01


def test_conv3d_subclasses_are_counted_on_both_frontends():
    """torchvision's Conv3DSimple (an nn.Conv3d subclass) counts like any conv: R3D-18's stem
    alone is 64*3*3*7*7 MACs per output position (Torch-Pruning's counter, which looks module
    types up exactly, counts it 0)."""
    stem = torchvision.models.video.r3d_18().stem.eval()
    args = (torch.randn(1, 3, 4, 32, 32),)
    out = stem(*args)
    positions = out[0, 0].numel()
    want = 64 * 3 * 3 * 7 * 7 * positions + 2 * 64 * positions  # the conv, then its BatchNorm
    for cost in (idapgraph.analyze(stem, args).cost,
                 idapgraph.analyze(export_onnx(stem, args)).cost):
        assert cost.flops == want


def test_symbolic_batch_preserved():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    proto = export_onnx(model, (x,), input_names=["x"], output_names=["y"],
                        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    r = idapgraph.compress(proto, flops=0.5)
    dim = r.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    feeds = {"x": torch.randn(3, 3, 64, 64).numpy()}
    assert onnx_out(r.model, feeds)[0].shape == (3, 1000)


def test_readme_ops_table_in_sync():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "ops_table.py")], capture_output=True,
                         text=True, check=True).stdout.strip()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ops-table:begin -->\n(.*?)\n<!-- ops-table:end -->", readme, re.S)
    assert block and block.group(1).strip() == out, "run: python tools/ops_table.py --write"




@pytest.mark.parametrize("dynamic", [False, True])
def test_shape_inference_without_weight_bytes_infers_the_same(dynamic):
    """Shapes are inferred on a copy whose large weights are typed graph inputs: the result is
    byte for byte what inference on the whole model gives (ONNX's, and with a symbolic batch
    onnxruntime's symbolic inference too)."""
    from idapgraph.frontends import onnx as onnx_frontend
    from idapgraph.frontends import onnx_light

    torch.manual_seed(0)
    axes = {"dynamic_axes": {"x": {0: "batch"}}} if dynamic else {}
    model = export_onnx(torchvision.models.resnet18(num_classes=10).eval(),
                        (torch.randn(1, 3, 32, 32),), input_names=["x"], **axes)
    light, _ = onnx_light.split(model)
    assert len(light.graph.initializer) < len(model.graph.initializer)  # weights left out
    whole = onnx_frontend._infer_light(model, [])  # the inference itself, on the whole model
    split = onnx_frontend._infer(model, [])
    assert split.SerializeToString(deterministic=True) == whole.SerializeToString(
        deterministic=True)


def test_a_torch_compress_does_not_load_onnx():
    """A torch module compressed without latency targets never imports onnx or onnxruntime
    (a second of imports on a compile that takes under one)."""
    code = ("import sys, torch, torchvision, idapgraph\n"
            "m = torchvision.models.resnet18(num_classes=10).eval()\n"
            "idapgraph.compress(m, (torch.randn(1, 3, 32, 32),), flops=0.5, method='magnitude',"
            " heal='none')\n"
            "print(sorted(k for k in ('onnx', 'onnxruntime') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "[]"
