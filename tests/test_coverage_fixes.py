"""fx-route freezes found by ``tools/coverage.py`` on timm models whose ONNX exports reached the
target: each model now reaches it on the fx route too and equals the original with the removed
channels zeroed."""

from __future__ import annotations

import pytest
import torch

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, torch_out


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


class BiasTableAttention(torch.nn.Module):
    """Attention with a learned per-head bias gathered from a table by a stored index
    (``table[:, idx]``: LeViT, TinyViT, EfficientFormer), its output reshaped back by
    ``reshape_as`` (LeViT's LinearNorm)."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 9) -> None:
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.table = torch.nn.Parameter(torch.randn(heads, 2 * tokens))
        g = torch.Generator().manual_seed(1)
        self.register_buffer("idx", torch.randint(0, 2 * tokens, (tokens, tokens), generator=g))
        self.norm = torch.nn.BatchNorm1d(dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * 0.25 + self.table[:, self.idx]
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.heads * self.d)
        y = self.proj(y)
        return self.norm(y.flatten(0, 1)).reshape_as(y)


@pytest.mark.parametrize("route", ["fx", "onnx", "onnx-folded"])
def test_heads_with_a_gathered_bias_table(route):
    """The table's head axis follows the attention heads (a Gather by a stored index passes
    the other axes through); every head was frozen before."""
    torch.manual_seed(0)
    model = BiasTableAttention().eval()
    model.norm.running_var.uniform_(0.5, 2.0)
    args = (torch.randn(2, 9, 32),)
    if route == "fx":
        r = idapgraph.compress(model, args, flops=0.6, method="random", heal="none")
        zero = idapgraph.apply_plan(model, r.plan, args, mode="zero")
        got, want = torch_out(r.model, args)[0], torch_out(zero, args)[0]
        assert r.model.table.shape[0] < 4  # heads went
    else:
        proto = export_onnx(model, args, do_constant_folding=route == "onnx-folded")
        r = idapgraph.compress(proto, flops=0.6, method="random", heal="none")
        zero = idapgraph.apply_plan(proto, r.plan, mode="zero")
        feeds = {proto.graph.input[0].name: args[0].numpy()}
        got, want = onnx_out(r.model, feeds)[0], onnx_out(zero, feeds)[0]
        tables = [tuple(i.dims) for i in r.model.graph.initializer
                  if tuple(i.dims[1:]) in ((18,), (9, 9))]  # the table, or it gathered (folded)
        assert tables and all(t[0] < 4 for t in tables), tables
    assert r.report.reached and r.report.flops_ratio <= 0.6 + 1e-9
    assert rel_err(want, got) < 1e-5


class TokenGather(torch.nn.Module):
    """Tokens reordered by a stored index between two layers (``x[:, idx]``: an ONNX Gather of
    an activation by a constant): the hidden channels pass through it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
        self.register_buffer("idx", torch.randperm(8, generator=torch.Generator().manual_seed(2)))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))[:, self.idx])


@pytest.mark.parametrize("route", ["fx", "onnx"])
def test_channels_pass_a_gather_of_tokens(route):
    torch.manual_seed(0)
    model, args = TokenGather().eval(), (torch.randn(2, 8, 16),)
    src = model if route == "fx" else export_onnx(model, args)
    r = idapgraph.compress(src, args if route == "fx" else None, flops=0.6, method="random",
                           heal="none")
    assert r.report.reached and r.plan.n_removed > 0
    if route == "fx":
        zero = idapgraph.apply_plan(model, r.plan, args, mode="zero")
        got, want = torch_out(r.model, args)[0], torch_out(zero, args)[0]
    else:
        zero = idapgraph.apply_plan(src, r.plan, mode="zero")
        feeds = {src.graph.input[0].name: args[0].numpy()}
        got, want = onnx_out(r.model, feeds)[0], onnx_out(zero, feeds)[0]
    assert rel_err(want, got) < 1e-5
