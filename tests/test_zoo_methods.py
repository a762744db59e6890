"""Every method with its default healing over the whole zoo, on both routes (issue 26: no
internal error on any zoo model with any method). A run either emits a valid model with the
original's output shapes (compress validates it: the ONNX checker and onnxruntime, or an fx run)
or is refused with one ``InputError`` line -- the one refusal expected here is ``taylor`` on
ONNX (it needs gradients). Slow: about two hours on one core (the default healing refits every
pruned layer, and the default allocation measures every group); `make test-all` runs it."""

from __future__ import annotations

import pytest
import torch

import idapgraph
from helpers import export_onnx, onnx_out, torch_out
from idapgraph.errors import InputError
from zoo import ALL, build
from zoo_checks import feeds

METHODS = ("idap", "magnitude", "random", "taylor")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ALL)
def test_every_method(name, method):
    model, args = build(name)
    r = idapgraph.compress(model, args, flops=0.5, method=method)
    assert r.report.reached and r.report.flops_ratio < 1
    assert isinstance(r.model, torch.fx.GraphModule)
    assert [g.shape for g in torch_out(r.model, args)] == [w.shape for w in torch_out(model, args)]
    proto = export_onnx(model, args)
    if method == "taylor":
        with pytest.raises(InputError, match="needs gradients"):
            idapgraph.compress(proto, flops=0.5, method=method)
        return
    r = idapgraph.compress(proto, flops=0.5, method=method)
    assert r.report.reached and r.report.flops_ratio < 1
    fd = feeds(proto, args)
    assert [g.shape for g in onnx_out(r.model, fd)] == [w.shape for w in onnx_out(proto, fd)]
