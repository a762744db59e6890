"""Op rules on small purpose-built nets, both backends: each net exercises one coupling rule;
zero-then-remove equivalence must hold and frozen spots must carry the right reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import idapgraph
from idapgraph.ir.plan import Plan
from helpers import export_onnx, onnx_out, rel_err, torch_out, example_feeds


class ConcatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 12, 1)
        self.c = nn.Conv2d(20, 16, 1)
        self.d, self.e = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.c(torch.cat([self.a(x), self.b(x)], dim=1)))
        u, v = torch.split(y, [8, 8], dim=1)
        w1, w2 = y.chunk(2, dim=1)
        return self.d(u) + self.e(v) + self.d(w2) * self.e(w1)


class GroupedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.gn = nn.GroupNorm(8, 32)
        self.g = nn.Conv2d(32, 64, 3, padding=1, groups=8)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.o = nn.Conv2d(64, 5, 1)

    def forward(self, x):
        return self.o(F.relu(self.dw(self.g(self.gn(self.a(x))))))


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.fc2 = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x)))
        return self.fc(torch.flatten(y, 1)) + self.fc2(y.view(1, 16 * 4 * 4))


class HeadsSliceSE(nn.Module):
    """Hard-coded head reshapes, a channel slice, a permute and a squeeze-excitation gate."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(12, 3 * 16)
        self.proj = nn.Linear(16, 12)
        self.c = nn.Conv2d(3, 24, 1)
        self.se1, self.se2 = nn.Conv2d(24, 6, 1), nn.Conv2d(6, 24, 1)
        self.tail = nn.Conv2d(12, 4, 1)

    def forward(self, tokens, img):
        q, k, v = self.qkv(tokens).view(1, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        t = self.proj((att @ v).transpose(1, 2).reshape(1, 5, 16))
        y = self.c(img)
        y = y * torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return t, self.tail(y[:, 4:16])


class PadDepthwise(nn.Module):
    """EfficientNet-Lite's "same" padding: an explicit asymmetric pad before a strided
    depthwise conv, and a reflect pad before a plain one."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 24, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(24, 24, 3, stride=2, groups=24)
        self.project = nn.Conv2d(24, 16, 1)
        self.tail = nn.Conv2d(16, 4, 3)

    def forward(self, x):
        y = self.dw(self.pad(F.relu(self.expand(x))))
        y = F.relu(self.project(F.relu(y)))
        return self.tail(F.pad(y, (1, 1, 1, 1), mode="reflect"))


class OptionA(nn.Module):
    """The CIFAR ResNets' "option A" shortcut: every other pixel with zero channels padded on
    both sides, added to a strided block's output."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(x + self.a2(F.relu(self.a1(x))))
        x = F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4)) + self.b2(F.relu(self.b1(x))))
        return self.head(x.mean((2, 3)))


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(self.b(torch.cumsum(self.a(x), dim=1)))


CASES = {
    "concat_split": (ConcatSplit, lambda: (torch.randn(1, 3, 8, 8),)),
    "grouped_norm": (GroupedNorm, lambda: (torch.randn(1, 3, 8, 8),)),
    "flatten_head": (FlattenHead, lambda: (torch.randn(1, 3, 8, 8),)),
    "heads_slice_se": (HeadsSliceSE, lambda: (torch.randn(1, 5, 12), torch.randn(1, 3, 6, 6))),
    "pad_depthwise": (PadDepthwise, lambda: (torch.randn(1, 3, 9, 9),)),
    "option_a": (OptionA, lambda: (torch.randn(2, 3, 8, 8),)),
}


@pytest.mark.parametrize("backend", ["fx", "onnx", "dynamo"])
def test_padding_passes_channels_through(backend):
    """A pad that leaves the channel axis alone couples its input and output channels: the
    expansion group before a padded depthwise conv and the group before a reflect pad stay
    prunable (before the pad rule, both were frozen as unknown ops)."""
    torch.manual_seed(0)
    model, args = PadDepthwise().eval(), (torch.randn(1, 3, 9, 9),)
    src = model if backend == "fx" else export_onnx(model, args, dynamo=backend == "dynamo")
    a = idapgraph.analyze(src, args if backend == "fx" else None)
    assert "pad" in a.graph.summary()
    assert {f.reason for f in a.coupling.frozen} == {"model input", "model output"}
    assert sorted(g.n_units for g in a.coupling.groups) == [16, 24]


@pytest.mark.parametrize("backend", ["fx", "onnx", "onnx10", "dynamo"])
def test_zero_padded_channels_keep_their_offset(backend):
    """Option A: stream channel i before the shortcut is channel i + 4 after it, and the 8
    padded channels go with the strided block's output alone. So the stream is prunable (it was
    frozen as a "padded axis"): 8 stream units spanning both stages' channel spaces, 8 padded
    units, 8 + 16 inner-conv units. Removing half of every group equals zeroing it (Pad's pads input
    rewritten; opset 10 keeps them in an attribute)."""
    torch.manual_seed(0)
    model, args = OptionA().eval(), (torch.randn(2, 3, 8, 8),)
    src = model if backend == "fx" else export_onnx(
        model, args, dynamo=backend == "dynamo", opset=10 if backend == "onnx10" else 17)
    a = idapgraph.analyze(src, args if backend == "fx" else None)
    assert {f.reason for f in a.coupling.frozen} == {"model input", "model output"}
    assert sorted((g.n_units, len(g.members)) for g in a.coupling.groups) == \
        [(8, 1), (8, 1), (8, 2), (16, 1)]
    plan = Plan(remove={g.key: list(range(1, g.n_units, 2)) for g in a.coupling.groups},
                units={g.key: g.n_units for g in a.coupling.groups})
    small = idapgraph.apply_plan(src, plan, args if backend == "fx" else None)
    zero = idapgraph.apply_plan(src, plan, args if backend == "fx" else None, mode="zero")
    if backend == "fx":
        got, want = torch_out(small, args), torch_out(zero, args)
        assert small.b2.out_channels == 8
    else:
        feeds = {src.graph.input[0].name: args[0].numpy()}
        got, want = onnx_out(small, feeds), onnx_out(zero, feeds)
    assert rel_err(want[0], got[0]) < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_rule_equivalence(case, backend):
    cls, mk = CASES[case]
    torch.manual_seed(0)
    model, args = cls().eval(), mk()
    src = model if backend == "fx" else export_onnx(model, args)
    r = idapgraph.compress(src, args if backend == "fx" else None, flops=0.5, method="random",
                           heal="none")
    assert r.plan.n_removed > 0 and r.report.params_after < r.report.params_before
    zero = idapgraph.apply_plan(src, r.plan, args if backend == "fx" else None, mode="zero")
    if backend == "fx":
        got, want = torch_out(r.model, args), torch_out(zero, args)
    else:
        feeds = {i.name: a.numpy() for i, a in zip(src.graph.input, args)}
        got, want = onnx_out(r.model, feeds), onnx_out(zero, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(w, g) < 1e-4


def test_grouped_conv_loses_whole_groups():
    torch.manual_seed(0)
    model, args = GroupedNorm().eval(), (torch.randn(1, 3, 8, 8),)
    r = idapgraph.compress(model, args, flops=0.5, method="random")
    mods = dict(r.model.named_modules())
    g, gn = mods["g"], mods["gn"]
    assert g.in_channels % 4 == 0 and g.out_channels % 8 == 0
    assert g.groups == g.in_channels // 4 == gn.num_groups
    assert mods["dw"].groups == mods["dw"].in_channels == mods["dw"].out_channels


def test_unknown_op_freezes_with_reason():
    torch.manual_seed(0)
    model, args = Unknown().eval(), (torch.randn(1, 3, 4, 4),)
    a = idapgraph.analyze(model, args)
    keys = {g.key for g in a.coupling.groups}
    assert keys == {"w1.out"}  # only conv b's output channels are free
    reasons = {(f.layer, f.role): f.reason for f in a.coupling.frozen}
    assert "cumsum" in reasons[("a", "out")]


def test_runtime_reshape_is_frozen():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.shape
            return self.b(y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))

    a = idapgraph.analyze(M().eval(), (torch.randn(1, 3, 4, 4),))
    assert not any(g.key == "w0.out" for g in a.coupling.groups)
    assert any("run time" in f.reason for f in a.coupling.frozen if f.layer == "a")


def test_plan_roundtrip_and_mismatch():
    torch.manual_seed(0)
    model, args = FlattenHead().eval(), (torch.randn(1, 3, 8, 8),)
    r = idapgraph.compress(model, args, flops=0.5, heal="none")
    plan = idapgraph.Plan.from_json(r.plan.to_json())
    out = idapgraph.apply_plan(model, plan, args)
    assert rel_err(torch_out(out, args)[0], torch_out(r.model, args)[0]) < 1e-6
    bad = idapgraph.Plan(remove={"w0.out": list(range(16))})
    with pytest.raises(idapgraph.InputError, match="every unit"):
        idapgraph.apply_plan(model, bad, args)
    with pytest.raises(idapgraph.InputError, match="does not have"):
        idapgraph.apply_plan(model, idapgraph.Plan(remove={"w9.out": [0]}), args)


def test_unreachable_target_warns():
    torch.manual_seed(0)
    model, args = Unknown().eval(), (torch.randn(1, 3, 4, 4),)
    with pytest.warns(UserWarning, match="not reachable"):
        r = idapgraph.compress(model, args, flops=0.1)
    assert not r.report.reached and r.report.warnings
    assert r.report.flops_after < r.report.flops_before
