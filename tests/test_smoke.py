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


def test_fx_output_shares_no_storage_with_the_source_and_leaves_it_unchanged():
    """emit copies the module without cloning what it slices (a deepcopy memo): every tensor
    of the output must still be its own, and the source's values stay as they were."""
    m = torchvision.models.resnet18().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = idapgraph.compress(m, (torch.randn(1, 3, 64, 64),), flops=0.5, method="magnitude",
                           heal="none")
    src = {v.untyped_storage().data_ptr() for v in m.state_dict().values()}
    shared = [k for k, v in r.model.state_dict().items() if v.untyped_storage().data_ptr() in src]
    assert shared == []
    with torch.no_grad():
        for p in r.model.parameters():
            p.add_(1.0)  # training the output must not move the source
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert r.model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
