"""fx-route freezes found by ``tools/coverage.py`` on timm models whose ONNX exports reached the
target: each model now reaches it on the fx route too and equals the original with the removed
channels zeroed."""

from __future__ import annotations

import torch

import idapgraph
from helpers import rel_err, torch_out


def _compressed(name: str):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    args = (torch.randn(1, 3, 64, 64),)
    r = idapgraph.compress(model, args, flops=0.5, method="random", heal="none")
    zero = idapgraph.apply_plan(model, r.plan, args, mode="zero")
    assert rel_err(torch_out(zero, args)[0], torch_out(r.model, args)[0]) < 1e-4
    return r


def test_inplace_activations_and_chunk_are_mapped():
    """EfficientViT-B0 on the torch.export route: ``nn.Hardswish(inplace=True)`` is
    ``aten.hardswish_`` and its fused q/k/v is split by ``aten.chunk``; both froze the channels
    around them (0.53 of the FLOPs, not 0.5)."""
    r = _compressed("efficientvit_b0")
    reasons = " ".join(f["reason"] for f in r.report.frozen)
    assert "hardswish_" not in reasons and "chunk" not in reasons
    assert r.report.reached and r.report.flops_ratio <= 0.5 + 1e-9


def test_reshape_to_sizes_read_at_run_time():
    """PVT-v2's MLP reshapes its hidden units to an image for a depthwise conv with
    ``B, N, C = x.shape; x.transpose(1, 2).view(B, C, H, W)``: the target's C is read from
    a tensor at run time, so it follows that tensor's channels (it froze them: nothing was
    pruned)."""
    r = _compressed("pvt_v2_b0")
    assert r.report.reached and r.report.flops_ratio <= 0.5 + 1e-9
