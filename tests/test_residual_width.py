"""The hidden (residual) width of a pre-norm transformer: a token embedding (its table shared
with the output head), RMSNorm written out as ``x * rsqrt(mean(x ** 2) + eps)``, residual adds.
Removing width channels equals zeroing them when every tensor the mean of squares reads is zero
there in the zeroed original (a table lookup, linear outputs, their sums and casts), on the fx,
TorchScript-export and dynamo-export routes; a centred statistic (LayerNorm written out) or a
square of an activation with f(0) != 0 keeps the width whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, torch_out

VOCAB, WIDTH, HIDDEN = 50, 24, 40


class _Norm(nn.Module):
    """RMSNorm (``centred=False``) or LayerNorm (``True``) written out as the ops models use."""

    def __init__(self, centred: bool = False, pre=None):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(WIDTH) + 0.5)
        self.centred, self.pre = centred, pre

    def forward(self, x):
        h = x.float()
        if self.centred:
            h = h - h.mean(-1, keepdim=True)
        s = self.pre(h) if self.pre is not None else h
        return self.weight * (h * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6))


class _FunctionalRMS(nn.Module):
    """``F.rms_norm`` called by a module of our own (timm's RmsNorm does this)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(WIDTH) + 0.5)

    def forward(self, x):
        return nn.functional.rms_norm(x, (WIDTH,), self.weight, 1e-6)


def _fused(kind: str) -> nn.Module:
    if kind == "functional":
        return _FunctionalRMS()
    norm = nn.RMSNorm(WIDTH, eps=None if kind == "default_eps" else 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(WIDTH) + 0.5)
    return norm


class _Decoder(nn.Module):
    """Embedding, two pre-norm MLP blocks on a residual stream, a final norm, the tied head.
    ``fused``: torch's RMSNorm (``module``, ``default_eps``: eps None) or ``F.rms_norm``
    (``functional``) in place of the written-out norm."""

    def __init__(self, centred: bool = False, pre=None, fused: str | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norms = nn.ModuleList(_fused(fused) if fused else _Norm(centred, pre)
                                   for _ in range(3))
        self.up = nn.ModuleList(nn.Linear(WIDTH, HIDDEN) for _ in range(2))
        self.down = nn.ModuleList(nn.Linear(HIDDEN, WIDTH, bias=False) for _ in range(2))

    def forward(self, ids):
        x = self.embed(ids)
        for norm, up, down in zip(self.norms, self.up, self.down):
            x = x + down(torch.relu(up(norm(x))))
        return nn.functional.linear(self.norms[2](x), self.embed.weight)  # tied head


def _ids(shape=(2, 7), seed=0):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _width_plan(analysis, share: float = 0.25):
    """Remove ``share`` of the width group (the group of WIDTH units), else None."""
    groups = [g for g in analysis.coupling.groups if g.n_units == WIDTH]
    if not groups:
        return None
    plan = idapgraph.Plan()
    g = groups[0]
    plan.remove[g.key] = sorted(np.random.default_rng(1).choice(
        WIDTH, int(WIDTH * share), replace=False).tolist())
    plan.units[g.key] = WIDTH
    return plan


def _zero_then_remove_torch(model, args, a, other=(3, 11)):
    """(the module with a quarter of the width removed, the width left); it equals the
    original with those channels zeroed (which differs from it) on ``args`` and on ids of
    shape ``other``."""
    plan = _width_plan(a)
    assert plan is not None, [f.reason for f in a.coupling.frozen]
    pruned = idapgraph.apply_plan(model, plan, args)
    zero = idapgraph.apply_plan(model, plan, args, mode="zero")
    for x in (args, (_ids(other, seed=2),)):
        got, want, ref = torch_out(pruned, x)[0], torch_out(zero, x)[0], torch_out(model, x)[0]
        assert got.shape == ref.shape and rel_err(want, got) < 1e-5
        assert rel_err(ref, want) > 1e-3  # zeroing changed the function
    return pruned, WIDTH - len(next(iter(plan.remove.values())))


def test_rms_width_zero_then_remove_fx():
    """fx (symbolic trace): the width group holds the table, every norm weight, the up
    projections' input columns and the down projections' output rows; removed equals zeroed."""
    model, args = _Decoder().eval(), (_ids(),)
    pruned, n = _zero_then_remove_torch(model, args, idapgraph.analyze(model, args))
    assert tuple(pruned.get_parameter("embed.weight").shape) == (VOCAB, n)
    assert tuple(pruned.get_parameter("norms.0.weight").shape) == (n,)


def _zero_then_remove_onnx(proto, args):
    """(the model with a quarter of the width removed, the width left); it passes the full
    checker and equals the original with those channels zeroed, which differs from it."""
    plan = _width_plan(idapgraph.analyze(proto))
    assert plan is not None
    pruned = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(pruned, full_check=True)
    feed = {pruned.graph.input[0].name: args[0].numpy()}
    got = onnx_out(pruned, feed)[0]
    want = onnx_out(idapgraph.apply_plan(proto, plan, mode="zero"), feed)[0]
    assert rel_err(want, got) < 1e-5 and rel_err(onnx_out(proto, feed)[0], want) > 1e-3
    return pruned, WIDTH - len(next(iter(plan.remove.values())))


@pytest.mark.parametrize("dynamo", [False, True])
def test_rms_width_zero_then_remove_onnx(dynamo):
    """Both ONNX exporters (ReduceMean of a Pow; a Gather of the stored table): removed equals
    zeroed, and every stored copy of the table (an exporter may store the head's transposed)
    loses the same columns."""
    model, args = _Decoder().eval(), (_ids(),)
    pruned, n = _zero_then_remove_onnx(export_onnx(model, args, dynamo=dynamo), args)
    tables = [tuple(t.dims) for t in pruned.graph.initializer if VOCAB in t.dims]
    assert tables and set(tables) <= {(VOCAB, n), (n, VOCAB)}  # no full-width copy left


@pytest.mark.parametrize("kind", ["centred", "sigmoid"])
def test_width_stays_whole_where_zeros_are_not_proven(kind):
    """A centred statistic (``x - mean(x)``: a zeroed channel becomes ``-mean``) or the square
    of ``sigmoid(x)`` (0.5 at a zeroed channel) would change the norm: the width is frozen."""
    model = _Decoder(centred=True) if kind == "centred" else _Decoder(pre=torch.sigmoid)
    a = idapgraph.analyze(model.eval(), (_ids(),))
    assert _width_plan(a) is None
    assert any(f.channels == WIDTH and "reduced over" in f.reason for f in a.coupling.frozen)


@pytest.mark.parametrize("fused", ["module", "default_eps", "functional"])
def test_fused_rms_width_zero_then_remove_fx(fused):
    """torch's RMSNorm (nn.RMSNorm, eps given or None; F.rms_norm) on the residual stream: its
    axis loses the zeroed channels, eps becomes eps n/n' and the output is scaled by
    sqrt(n/n'), so removed equals zeroed."""
    model, args = _Decoder(fused=fused).eval(), (_ids(),)
    pruned, n = _zero_then_remove_torch(model, args, idapgraph.analyze(model, args))
    assert tuple(pruned.get_parameter("norms.0.weight").shape) == (n,)


def test_fused_rms_width_zero_then_remove_torch_export():
    """The same through torch.export's ATen graph (``aten.rms_norm``: normalized_shape and
    eps are call arguments; the export is specialised to the example's shape)."""
    model, args = _Decoder(fused="module").eval(), (_ids(),)
    gm = torch.export.export(model, args, strict=False).module()
    _zero_then_remove_torch(gm, args, idapgraph.analyze(gm, args), other=tuple(args[0].shape))


def test_fused_rms_width_zero_then_remove_onnx():
    """The dynamo exporter at opset 23 writes RMSNormalization: its epsilon is rewritten and a
    Mul rescales its output; the result passes the full checker and equals zeroing."""
    model, args = _Decoder(fused="module").eval(), (_ids(),)
    proto = export_onnx(model, args, dynamo=True, opset_version=23)
    assert any(n.op_type == "RMSNormalization" for n in proto.graph.node)
    pruned, n = _zero_then_remove_onnx(proto, args)
    eps = [a.f for n in pruned.graph.node if n.op_type == "RMSNormalization"
           for a in n.attribute if a.name == "epsilon"]
    assert eps and all(abs(e - 1e-6 * WIDTH / n) < 1e-9 for e in eps)


def test_fused_rms_of_an_unproven_input_stays_frozen():
    """An RMSNorm whose input is not proven zero at zeroed channels (here sigmoid of the
    stream: 0.5 there) keeps the width frozen, with the reason named."""
    model = _Decoder(fused="module")
    model.norms[0] = nn.Sequential(nn.Sigmoid(), model.norms[0])
    a = idapgraph.analyze(model.eval(), (_ids(),))
    assert _width_plan(a) is None
    assert any(f.channels == WIDTH and "LayerNorm/RMSNorm" in f.reason for f in a.coupling.frozen)
