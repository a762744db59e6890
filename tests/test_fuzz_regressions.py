"""Bugs found by the fuzzer (tests/test_fuzz.py, tools/fuzz.py), each as a minimal fixed model."""

from __future__ import annotations

import io
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import idapgraph
from helpers import example_feeds, export_onnx, onnx_out, rel_err, torch_out


def _onnx_model(nodes, inputs, outputs, inits, opset=21) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "regression", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# -- 1. a linear layer whose input has no inferred shape crashed cost analysis -------------------

def test_linear_after_tensor_of_unknown_shape_is_counted():
    """Found on raw ONNX: shape inference gave GroupNormalization-21 no output shape (see 8), so
    the MatMul after it read a tensor of unknown rank and ``cost`` raised TypeError indexing its
    shape. Any op inference cannot type does the same; the IR case, built directly:"""
    from idapgraph.ir.graph import PARAM, Graph, Node, Tensor
    from idapgraph.passes import cost, coupling

    g = Graph("onnx")
    w = np.ones((6, 3), np.float32)
    g.add_tensor(Tensor("x", None))
    g.add_tensor(Tensor("w", (6, 3), kind=PARAM, load=lambda: w, trainable=True))
    g.add_tensor(Tensor("y", None))
    g.add_node(Node("mm", "linear", ["x", "w", None], ["y"], {"layout": "io"}, "MatMul"))
    g.inputs, g.outputs = ["x"], ["y"]
    assert cost.count(g).params == 18
    assert coupling.analyze(g).groups == []


# -- 2. bypassing two chained residual blocks (the second's skip is the first's add) ------------

class ChainedBlocks(nn.Module):
    """y1 = s + f1(s); y2 = y1 + f2(y1); y3 = y2 + f3(y2): each block's skip is the add before."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.f = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        for f in self.f:
            y = y + f(y)
        return self.head(y)


def _reference(model, x):
    """The same model with every branch zeroed, computed by hand."""
    with torch.no_grad():
        return model.head(model.stem(x)).numpy()


@pytest.mark.parametrize("order", [["b0", "b1", "b2"], ["b1", "b0", "b2"], ["b2", "b1", "b0"]])
@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_bypass_chained_blocks(backend, order):
    """The emitters looked up each block's skip tensor in the graph as it was before any bypass;
    once b0's add was removed, b1's skip (that add's output) dangled: fx lint error, ONNX
    "not topologically sorted"."""
    torch.manual_seed(0)
    model, x = ChainedBlocks().eval(), torch.randn(1, 2, 5, 5)
    plan = idapgraph.Plan(bypass=order)
    want = _reference(model, x)
    if backend == "fx":
        got = torch_out(idapgraph.apply_plan(model, plan, (x,)), (x,))[0]
    else:
        proto = export_onnx(model, (x,))
        out = idapgraph.apply_plan(proto, plan)
        onnx.checker.check_model(out, full_check=True)
        got = onnx_out(out, {proto.graph.input[0].name: x.numpy()})[0]
    assert rel_err(want, got) < 1e-5


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_truncation_removes_chained_blocks(backend):
    """Stage 2 without healing bypasses one block at a time on the already-bypassed model: the
    second block's skip was looked up by a name the first bypass had deleted (KeyError)."""
    torch.manual_seed(0)
    model, x = ChainedBlocks().eval(), torch.randn(1, 2, 5, 5)
    with torch.no_grad():  # removal order b1, b0, b2 (smallest relative change first)
        for f, k in zip(model.f, (0.01, 0.001, 1.0)):
            f.weight.mul_(k)
            f.bias.mul_(k)
    src = model if backend == "fx" else export_onnx(model, (x,))
    r = idapgraph.compress(src, (x,) if backend == "fx" else None, blocks=3, heal="none")
    assert r.report.blocks_bypassed == ["b1", "b0", "b2"]
    got = (torch_out(r.model, (x,)) if backend == "fx"
           else onnx_out(r.model, {src.graph.input[0].name: x.numpy()}))[0]
    assert rel_err(_reference(model, x), got) < 1e-5


# -- 3. GroupNorm(1, C) exported by TorchScript: channels folded into InstanceNorm's reduced axis --

@pytest.mark.parametrize("opset", [13, 17])
def test_groupnorm_one_group_torchscript_export(opset):
    """The exporter writes GroupNorm as Reshape(N, groups, -1) -> InstanceNormalization ->
    Reshape -> Mul -> Add. With one group every channel lands on the InstanceNorm's normalised
    axis, which the instancenorm rule passed through like a BatchNorm's: removing a channel
    changed the statistics (zero-then-remove error 8 %). Those axes are now frozen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.GroupNorm(1, 6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    proto = export_onnx(model, (x,), opset=opset)
    a = idapgraph.analyze(proto)
    assert "w0.out" not in {g.key for g in a.coupling.groups}
    assert any("InstanceNorm" in f.reason for f in a.coupling.frozen if f.role == "out")
    with pytest.raises(idapgraph.InputError, match="does not have"):
        idapgraph.apply_plan(proto, idapgraph.Plan(remove={"w0.out": [0]}))
    two = export_onnx(nn.Sequential(nn.Conv2d(3, 6, 1), nn.GroupNorm(2, 6),
                                    nn.Conv2d(6, 2, 1)).eval(), (x,), opset=opset)
    plan = idapgraph.Plan(remove={"w0.out": [1]})  # two groups: one can still go
    feeds = {two.graph.input[0].name: x.numpy()}
    got = onnx_out(idapgraph.apply_plan(two, plan), feeds)[0]
    want = onnx_out(idapgraph.apply_plan(two, plan, mode="zero"), feeds)[0]
    assert rel_err(want, got) < 1e-5


# -- 4. fx: a residual block whose skip is one output of a split ---------------------------------

class SplitSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.f = nn.Conv2d(2, 6, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [2, 4], 1)
        return self.head(torch.cat([a, b + self.f(b)], 1))


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_bypass_block_whose_skip_is_a_split_output(backend):
    """IR names a tuple element ``split.1``; the fx emitter looked the skip up among fx node
    names (the element is a getitem node) and raised KeyError."""
    torch.manual_seed(0)
    model, x = SplitSkip().eval(), torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        a, b = torch.split(model.stem(x), [2, 4], 1)
        want = model.head(torch.cat([a, b], 1)).numpy()
    plan = idapgraph.Plan(bypass=["b0"])
    if backend == "fx":
        got = torch_out(idapgraph.apply_plan(model, plan, (x,)), (x,))[0]
    else:
        proto = export_onnx(model, (x,))
        got = onnx_out(idapgraph.apply_plan(proto, plan), {proto.graph.input[0].name: x.numpy()})[0]
    assert rel_err(want, got) < 1e-5


# -- 5. Expand to a stored shape (x.expand(1, C, H, W); a folded expand_as in ONNX) -------------

class SEExpand(nn.Module):
    def __init__(self, like: bool = False):
        super().__init__()
        self.like = like
        self.a, self.se, self.o = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        g = torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return self.o(y * (g.expand_as(y) if self.like else g.expand(1, 4, 3, 3)))


@pytest.mark.parametrize("backend,like", [("fx", False), ("onnx", False), ("onnx", True)])
def test_expand_to_stored_shape_follows_removed_channels(backend, like):
    """The expand rule coupled the channel axis through an Expand but nothing rewrote the
    target shape stored in the graph (fx: literal sizes; ONNX: the shape constant, also what an
    exported expand_as folds to), so the pruned model expanded 3 channels to 4 and failed."""
    torch.manual_seed(0)
    model, x = SEExpand(like).eval(), torch.randn(1, 2, 3, 3)
    plan = idapgraph.Plan(remove={"w0.out": [1]})
    if backend == "fx":
        got = torch_out(idapgraph.apply_plan(model, plan, (x,)), (x,))[0]
        want = torch_out(idapgraph.apply_plan(model, plan, (x,), mode="zero"), (x,))[0]
    else:
        proto = export_onnx(model, (x,))
        feeds = {proto.graph.input[0].name: x.numpy()}
        got = onnx_out(idapgraph.apply_plan(proto, plan), feeds)[0]
        want = onnx_out(idapgraph.apply_plan(proto, plan, mode="zero"), feeds)[0]
    assert rel_err(want, got) < 1e-5


# -- 6. fx expand_as: the output takes the shape of the other operand ---------------------------

class ExpandAsOther(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.se = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1)
        self.o1, self.o2 = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y1, y2 = self.a(x), self.b(x)
        g = torch.sigmoid(self.se(y1.mean((2, 3), keepdim=True)))
        return self.o1(g.expand_as(y2) * y1), self.o2(y2)


def test_fx_expand_as_couples_the_shape_operand():
    """``g.expand_as(y2)`` only listed ``g`` as an operand, so y2's channels (conv b) formed a
    group of their own; removing one made expand_as produce a size that no longer matched g."""
    torch.manual_seed(0)
    model, x = ExpandAsOther().eval(), torch.randn(1, 2, 3, 3)
    a = idapgraph.analyze(model, (x,))
    assert [g.key for g in a.coupling.groups] == ["w0.out"]  # a, b and se tied together
    for units in ([0], [1, 3]):
        plan = idapgraph.Plan(remove={"w0.out": units})
        got = torch_out(idapgraph.apply_plan(model, plan, (x,)), (x,))
        want = torch_out(idapgraph.apply_plan(model, plan, (x,), mode="zero"), (x,))
        assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-5


# -- 7. NOT FIXED: group keys count layers the ONNX exporter drops (dead code, merged calls) -----

class DeadLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.unused, self.a, self.b = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        self.unused(x)  # computed, never used: fx keeps the call, the exporter drops it
        return self.b(torch.relu(self.a(x)))


class RepeatedCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 5),
                                          nn.Linear(5, 2))

    def forward(self, x):
        y = torch.tanh(self.a(x))
        z = self.b(y) + self.b(y)  # the TorchScript exporter merges the two identical calls
        return self.d(torch.relu(self.c(z)))  # so c is w3 on fx and w2 in ONNX


@pytest.mark.xfail(strict=True, reason="w<ordinal> keys count weighted fx nodes, including "
                   "ones the exporter removes (dead layers) or merges (identical calls); "
                   "fixing it needs ordinals over live, distinct layers in coupling (passes/)")
@pytest.mark.parametrize("cls,shape", [(DeadLayer, (1, 2, 4, 4)), (RepeatedCall, (1, 3))])
def test_group_keys_match_the_onnx_export(cls, shape):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(*shape)
    fx_keys = {g.key: g.n_units for g in idapgraph.analyze(model, (x,)).coupling.groups}
    onnx_keys = {g.key: g.n_units for g in idapgraph.analyze(export_onnx(model, (x,))).coupling.groups}
    assert fx_keys == onnx_keys


# -- 8. ONNX GroupNormalization: shape inference types nothing after it ---------------------------

def _conv_groupnorm_conv(opset=21):
    rng = np.random.default_rng(0)
    return _onnx_model(
        [helper.make_node("Conv", ["x", "W1", "B1"], ["a"]),
         helper.make_node("GroupNormalization", ["a", "s", "b"], ["g"], num_groups=2),
         helper.make_node("Relu", ["g"], ["r"]),
         helper.make_node("Conv", ["r", "W2"], ["y"])],
        [_vi("x", (1, 2, 4, 4))], [_vi("y", (1, 3, 4, 4))],
        {"W1": rng.standard_normal((4, 2, 1, 1)), "B1": rng.standard_normal(4),
         "s": rng.standard_normal(4) + 1, "b": rng.standard_normal(4),
         "W2": rng.standard_normal((3, 4, 1, 1))}, opset)


def test_onnx_groupnorm_loses_whole_groups():
    """onnx 1.23 infers no output type for GroupNormalization (18 and 21), so every tensor after
    it had unknown rank and was frozen: the groupnorm rule never applied to an ONNX model. The
    frontend now gives such outputs their input's type before inference goes on."""
    m = _conv_groupnorm_conv()
    a = idapgraph.analyze(m)
    assert a.graph.shape("r") == (1, 4, 4, 4)
    assert {g.key: g.n_units for g in a.coupling.groups} == {"w0.out": 2}  # two GroupNorm groups
    plan = idapgraph.Plan(remove={"w0.out": [1]})
    small = idapgraph.apply_plan(m, plan)
    gn = next(n for n in small.graph.node if n.op_type == "GroupNormalization")
    attrs = {at.name: helper.get_attribute_value(at) for at in gn.attribute}
    assert attrs["num_groups"] == 1  # rewritten
    feeds = example_feeds(m)
    want = onnx_out(idapgraph.apply_plan(m, plan, mode="zero"), feeds)[0]
    assert rel_err(want, onnx_out(small, feeds)[0]) < 1e-5


# -- 9. modules from torch.export (the fallback when symbolic tracing fails) refuse .eval() ------

class NeedsExport(nn.Module):
    """A Python int taken from a shape: torch.fx cannot trace it, idapgraph falls back to
    torch.export and gets an ATen-level GraphModule."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        for _ in range(int(x.shape[2]) // 4):
            y = y * 1.0
        return self.b(y)


@pytest.mark.parametrize("kw", [dict(method="idap", heal="none"), dict(method="random", heal="stats"),
                                dict(method="random", heal="none", blocks=0)])
def test_torch_export_fallback_runs_calibration(kw):
    """The calibration runner called ``gm.eval()`` on the exported module, which raises
    NotImplementedError, so compress with the default method or healing crashed on every
    module that needs the torch.export fallback (the README's path for transformers); a module
    exported by the user crashed already in ``analyze``."""
    torch.manual_seed(0)
    model, x = NeedsExport().eval(), torch.randn(1, 2, 4, 4)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)  # the premise: this module needs the fallback
    r = idapgraph.compress(model, (x,), flops=0.5, calib=torch.randn(16, 2, 4, 4), **kw)
    assert r.plan.n_removed > 0
    exported = torch.export.export(model, (x,), strict=False).module()
    a = idapgraph.analyze(exported, (x,), divergence_scores=True)
    assert [g.key for g in a.coupling.groups] == ["w0.out"]
    plan = idapgraph.Plan(remove={"w0.out": [0, 2]})
    got = torch_out(idapgraph.apply_plan(exported, plan, (x,)), (x,))[0]
    want = torch_out(idapgraph.apply_plan(exported, plan, (x,), mode="zero"), (x,))[0]
    assert rel_err(want, got) < 1e-5


# -- 10. FLOPs of a model with a symbolic (dynamic) batch axis were 0 ------------------------------

def test_flops_target_on_a_dynamic_batch_onnx_model():
    """Every activation of an export with ``dynamic_axes`` has a symbolic batch dimension, and
    the cost rules counted a tensor with any unknown dimension as 0 elements: FLOPs were 0, so
    ``--flops 0.5`` removed nothing and reported the target reached."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    static = export_onnx(model, (x,))
    dynamic = export_onnx(model, (x,), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert idapgraph.analyze(dynamic).cost.flops == idapgraph.analyze(static).cost.flops > 0
    r = idapgraph.compress(dynamic, flops=0.5, method="magnitude", heal="none")
    assert r.plan.n_removed > 0 and r.report.reached and r.report.flops_ratio <= 0.5
    assert r.plan.remove == idapgraph.compress(static, flops=0.5, method="magnitude",
                                               heal="none").plan.remove


# -- 11. taylor scores on a model with nothing to prune --------------------------------------------

def test_taylor_on_a_model_without_groups_warns_instead_of_crashing():
    """With every channel frozen (a single conv: its channels are the model's input and
    output) taylor scoring asked autograd for gradients of an empty list: RuntimeError."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(2, 3, 1)).eval(), torch.randn(1, 2, 4, 4)
    with pytest.warns(UserWarning, match="not reachable"):
        r = idapgraph.compress(model, (x,), flops=0.5, method="taylor", heal="none")
    assert r.plan.n_removed == 0 and not r.report.reached


# -- 12. the report did not count the biases healing adds -----------------------------------------
# report.params_after/flops_after were counted from the rewrite's shapes before healing, so biases
# healing gave bias-less layers were missing and 'reached' could be claimed for a params target
# the emitted model misses. HealReport.bias_added now records them and compress() counts them.

@pytest.mark.parametrize("heal", ["stats", "bias"])
def test_report_counts_biases_added_by_healing(heal):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, bias=False)).eval()
    x = torch.randn(1, 3, 6, 6)
    r = idapgraph.compress(model, (x,), params=0.5, method="magnitude", heal=heal,
                           calib=torch.randn(32, 3, 6, 6))
    assert r.report.heal["kept"] and r.report.heal["bias_added"]  # the premise: biases added
    assert sum(p.numel() for p in r.model.parameters()) == r.report.params_after
    # the target is met on the counts that include the added biases (0.467 / 0.472 measured)
    assert r.report.reached and r.report.params_ratio <= 0.5


# -- 13. mean substitution could grow the model ------------------------------------------------------
# With healing, a bypassed branch was replaced by its mean output per position, a (1, C, H, W)
# constant: here 256 values replaced a 20-parameter branch, and a 3.5x larger model reported
# params=0.9 reached. Under a params target the constant is now at most the branch's size (per
# channel here: blocks.fit_mean), and 'reached' is checked on the final counts.

class SmallResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.f = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1)
        self.head, self.out = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.out(torch.relu(self.head(s + self.f(s))))


def test_params_target_holds_after_mean_substitution():
    torch.manual_seed(0)
    model, x = SmallResidual().eval(), torch.randn(1, 2, 8, 8)
    r = idapgraph.compress(model, (x,), params=0.9, blocks=1, calib=torch.randn(16, 2, 8, 8))
    assert r.report.blocks_bypassed == ["b0"]  # the premise: stage 2 ran, with healing
    assert 0 < r.report.params_constants <= 20  # a per-channel mean (4), not 256 values
    # 'reached' is claimed on the final counts, and holds: 60 of 90 parameters, mean included
    assert r.report.reached and r.report.params_ratio <= 0.9
    assert r.report.params_after < r.report.params_before


# -- 14. a plan that bypasses overlapping blocks (a residual block and the layer ending in it) -----

class OneAttentionLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 4)
        self.q, self.k, self.v = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.o, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        att = (self.q(h) @ self.k(h).transpose(1, 2) * 0.5).softmax(-1)
        return self.head(h + self.o(att @ self.v(h)))


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_plan_with_overlapping_blocks(backend):
    """One attention residual is both block b0 and transformer layer layer0, ending in the same
    Add. Bypassing both removed that Add twice: ONNX IndexError in emit.onnx.bypass. A block
    inside a bypassed layer now goes with the layer; every combination gives the same model."""
    torch.manual_seed(0)
    model, x = OneAttentionLayer().eval(), torch.randn(1, 5, 6)
    src = model if backend == "fx" else export_onnx(model, (x,))
    ex = (x,) if backend == "fx" else None
    from idapgraph.passes import blocks as blocks_pass

    found = {b.key: b for b in blocks_pass.find(idapgraph.analyze(src, ex).graph)}
    assert {"b0", "layer0"} <= set(found) and found["b0"].overlaps(found["layer0"])
    with torch.no_grad():
        want = model.head(model.inp(x)).numpy()
    for keys in (["b0", "layer0"], ["layer0", "b0"], ["b0"], ["layer0"]):
        out = idapgraph.apply_plan(src, idapgraph.Plan(bypass=keys), ex)
        got = (torch_out(out, (x,)) if backend == "fx"
               else onnx_out(out, {src.graph.input[0].name: x.numpy()}))[0]
        assert rel_err(want, got) < 1e-5, keys


# -- 15. statistics matching made a 0.5-FLOPs target miss (0.502) on a BatchNorm CNN ----------------
# The conv before each BatchNorm has no bias, so every shift healing computed became a new conv
# bias (2 FLOPs per output element). The shift now goes into the BatchNorm's running mean
# (BN(y + b) with mean μ is BN(y) with mean μ − b): no new parameter, the same function.

class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)
        g = torch.Generator().manual_seed(0)
        for bn in (self.bn_a, self.bn_b):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g))

    def forward(self, x):
        return self.head(torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))))


@pytest.mark.parametrize("backend", ["fx", "onnx-bn"])
@pytest.mark.parametrize("heal", ["stats", "lsq"])
def test_healing_shift_goes_into_batchnorm_mean(backend, heal, monkeypatch):
    from idapgraph.passes import heal as heal_pass

    torch.manual_seed(0)
    model, x = ConvBN().eval(), torch.randn(2, 3, 6, 6)
    if backend == "fx":
        src, ex, feeds = model, (x,), None
    else:  # no constant folding: the BatchNormalization nodes stay in the ONNX graph
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
        src, ex = onnx.load_from_string(buf.getvalue()), None
        assert any(n.op_type == "BatchNormalization" for n in src.graph.node)
        feeds = {src.graph.input[0].name: x.numpy()}
    plan = idapgraph.Plan(remove={"w0.out": [1, 4, 6]})
    cal = torch.randn(32, 3, 6, 6)
    r = idapgraph.compress(src, ex, plan=plan, calib=cal, heal=heal)
    assert r.report.heal["kept"] and r.report.heal["bias_added"] == {}
    monkeypatch.setattr(heal_pass, "absorb_shifts", lambda g, nb, v: ({}, nb))
    with_bias = idapgraph.compress(src, ex, plan=plan, calib=cal, heal=heal)
    assert with_bias.report.heal["bias_added"]  # the premise: without it, biases are added
    assert with_bias.report.params_after > r.report.params_after
    run = (lambda m: torch_out(m, (x,))) if backend == "fx" else (lambda m: onnx_out(m, feeds))
    assert rel_err(run(with_bias.model)[0], run(r.model)[0]) < 1e-5
    if backend == "fx":
        assert sum(p.numel() for p in r.model.parameters()) == r.report.params_after


# -- 14. healing's new biases pushed a met target over ---------------------------------------------
# Least squares gave every refitted bias-less layer an intercept (a new bias: 2 FLOPs per output
# element) after the selection had met the target exactly: DenseNet-121 at flops=0.5 ended at
# 0.5008 (reached=False, a warning telling the user to ask for less); this net missed 9 of 14
# targets. Biases now go only where the target leaves room (passes.heal.BiasRoom); a layer
# without room is refitted without one, and heal["notes"] says how many.

def test_healing_keeps_a_met_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(24, 8, 1, bias=False)).eval()
    x, cal = torch.randn(1, 3, 8, 8), torch.randn(64, 3, 8, 8)
    notes = []
    for t in (0.3, 0.4, 0.6, 0.8, 0.9):
        for kw in ({"flops": t}, {"params": t}):
            r = idapgraph.compress(model, (x,), method="magnitude", calib=cal, round_to=1,
                                   measure_groups=False, **kw)
            rep = r.report
            assert rep.reached and not rep.warnings, (kw, rep.flops_ratio, rep.params_ratio)
            assert (rep.flops_ratio if "flops" in kw else rep.params_ratio) <= t
            assert rep.heal["kept"] and rep.heal["corrections"]  # still healed
            assert sum(p.numel() for p in r.model.parameters()) == rep.params_after
            notes += rep.heal["notes"]
    assert any("no bias added" in n for n in notes)  # the premise: some had no room
