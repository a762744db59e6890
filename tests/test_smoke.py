import numpy as np
import torch
import torchvision

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, torch_out, example_feeds


def test_resnet18_both_backends_equivalent_and_cross_backend():
    m = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    proto = export_onnx(m, (x,))
    r = idapgraph.compress(proto, flops=0.5, method="magnitude", heal="none")
    assert r.report.flops_ratio <= 0.5 + 1e-6
    assert r.report.params_after < r.report.params_before
    feeds = example_feeds(proto)
    zero = idapgraph.apply_plan(proto, r.plan, mode="zero")
    assert rel_err(onnx_out(zero, feeds)[0], onnx_out(r.model, feeds)[0]) < 1e-4
    gm = idapgraph.apply_plan(m, r.plan, (x,))
    xin = torch.from_numpy(next(iter(feeds.values())))
    assert rel_err(torch_out(gm, (xin,))[0], onnx_out(r.model, feeds)[0]) < 1e-4
