"""Transformers: whole attention heads and MLP units are pruned on both backends, with every
hard-coded head count rewritten, and removing equals zeroing (zero-then-remove equivalence)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import idapgraph
from helpers import export_onnx, onnx_out, rel_err, torch_out
from zoo import build


def _head_plan(analysis, heads_removed: dict[int, list[int]], mlp_fraction: float = 0.3):
    """Remove the listed heads of the i-th head group and a fraction of every MLP group."""
    plan = idapgraph.Plan()
    heads = [g for g in analysis.coupling.groups if g.members[0].index.shape[1] > 1]
    mlps = [g for g in analysis.coupling.groups if g.members[0].index.shape[1] == 1
            and g.key.startswith("w") and g.n_units >= 64]
    assert len(heads) >= len(heads_removed), [g.key for g in analysis.coupling.groups]
    for i, units in heads_removed.items():
        plan.remove[heads[i].key] = units
        plan.units[heads[i].key] = heads[i].n_units
    rng = np.random.default_rng(0)
    for g in mlps:
        plan.remove[g.key] = sorted(rng.choice(g.n_units, int(g.n_units * mlp_fraction),
                                               replace=False).tolist())
        plan.units[g.key] = g.n_units
    return plan, heads


def _feeds(proto, args):
    inits = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    return {n: a.numpy() for n, a in zip(names, args)}


def test_bert_fx_whole_heads():
    model, args = build("hf_bert")
    a = idapgraph.analyze(model, args)
    plan, heads = _head_plan(a, {0: [1], 1: [0, 2]})
    # a head group spans Q, K and V (rows) and the output projection (columns), 32 dims a head
    assert [h.n_units for h in heads] == [4, 4]
    assert heads[0].members[0].index.shape == (4, 32)
    pruned = idapgraph.apply_plan(model, plan, args)
    zero = idapgraph.apply_plan(model, plan, args, mode="zero")
    got, want, ref = torch_out(pruned, args), torch_out(zero, args), torch_out(model, args)
    assert got[0].shape == ref[0].shape
    assert rel_err(want[0], got[0]) < 1e-4
    assert rel_err(ref[0], want[0]) > 1e-3  # zeroing the heads did change the function
    q0 = pruned.get_parameter("model.encoder.layer.0.attention.self.query.weight")
    o1 = pruned.get_parameter("model.encoder.layer.1.attention.output.dense.weight")
    assert tuple(q0.shape) == (96, 128) and tuple(o1.shape) == (128, 64)


@pytest.mark.parametrize("dynamo", [False, True], ids=["ts", "dynamo"])
def test_bert_onnx_whole_heads(dynamo):
    model, args = build("hf_bert")
    proto = export_onnx(model, args, dynamo=dynamo)
    a = idapgraph.analyze(proto)
    plan, _ = _head_plan(a, {0: [3], 1: [1, 2]})
    pruned = idapgraph.apply_plan(proto, plan)
    zero = idapgraph.apply_plan(proto, plan, mode="zero")
    onnx.checker.check_model(pruned, full_check=True)
    feeds = _feeds(proto, args)
    got, want = onnx_out(pruned, feeds), onnx_out(zero, feeds)
    assert got[0].shape == onnx_out(proto, feeds)[0].shape
    assert rel_err(want[0], got[0]) < 1e-4
    sizes = sorted(int(np.prod(t.dims)) for t in pruned.graph.initializer if len(t.dims) == 2)
    assert sizes.count(128 * 96) >= 3 and sizes.count(128 * 64) >= 3  # q, k, v of each layer


def _int_vectors(proto) -> list[list[int]]:
    """Every 1-D int64 constant of a graph (initializers and Constant nodes)."""
    tensors = list(proto.graph.initializer) + [
        a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return [[int(v) for v in onnx.numpy_helper.to_array(t)] for t in tensors
            if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1]


class LiteralHeads(nn.Module):
    """Self-attention written with literal head counts in every reshape, as hand-written and
    exported models often are (no -1 anywhere)."""

    def __init__(self, d=64, h=4, t=10):
        super().__init__()
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.d, self.h, self.t = d, h, t

    def forward(self, x):
        b, t, d, h = x.shape[0], self.t, self.d, self.h
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.reshape(b, t, h, d // h).permute(0, 2, 1, 3)
        k = k.reshape(b, t, h, d // h).permute(0, 2, 3, 1)
        v = v.reshape(b, t, h, d // h).permute(0, 2, 1, 3)
        att = torch.softmax(torch.matmul(q, k) * 0.25, dim=-1)
        y = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(b, t, d)
        x = x + self.o(y)
        return x + self.down(torch.relu(self.up(x)))


def test_literal_head_reshapes_rewritten():
    torch.manual_seed(0)
    model, args = LiteralHeads().eval(), (torch.randn(1, 10, 64),)
    proto = export_onnx(model, args)
    assert [1, 10, 4, 16] in _int_vectors(proto)  # really hard-coded
    a = idapgraph.analyze(proto)
    plan, heads = _head_plan(a, {0: [0, 2]})
    assert heads[0].members[0].index.shape == (4, 48)  # q, k, v: 16 dims each
    for src, run in ((proto, lambda m: onnx_out(m, _feeds(proto, args))),
                     (model, lambda m: torch_out(m, args))):
        extra = (args,) if src is model else ()
        pruned = idapgraph.apply_plan(src, plan, *extra)
        zero = idapgraph.apply_plan(src, plan, *extra, mode="zero")
        assert rel_err(run(zero)[0], run(pruned)[0]) < 1e-5
    pruned = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(pruned, full_check=True)
    consts = _int_vectors(pruned)
    assert [1, 10, 2, 16] in consts and [1, 10, 4, 16] not in consts
    assert [1, 10, 32] in consts  # the merge back to the hidden size follows


def test_dynamic_batch_head_reshapes_rewritten():
    """Exported with a symbolic batch axis, the reshape targets are concatenated at run time
    from Shape(x)[0] and literal sizes: the literal head count is still rewritten (in a private
    copy of the Concat) and the batch axis stays symbolic."""
    torch.manual_seed(0)
    model = LiteralHeads().eval()
    proto = export_onnx(model, (torch.randn(1, 10, 64),), input_names=["x"],
                        dynamic_axes={"x": {0: "batch"}})
    assert not any(n.op_type == "Reshape" and n.input[1] in {t.name for t in proto.graph.initializer}
                   for n in proto.graph.node)
    a = idapgraph.analyze(proto)
    plan, heads = _head_plan(a, {0: [1, 3]})
    assert heads[0].members[0].index.shape == (4, 48)
    pruned = idapgraph.apply_plan(proto, plan)
    zero = idapgraph.apply_plan(proto, plan, mode="zero")
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 10, 64)).astype(np.float32)}
    got, want = onnx_out(pruned, feeds), onnx_out(zero, feeds)
    assert got[0].shape == (3, 10, 64) and rel_err(want[0], got[0]) < 1e-5
    targets = _concat_targets(pruned)
    assert [None, 10, 2, 16] in targets and [None, 10, 4, 16] not in targets, targets


def _concat_targets(proto) -> list[list]:
    """Reshape targets built by Concat: constant entries, None for run-time pieces."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                   for n in proto.graph.node if n.op_type == "Constant"})
    prod = {o: n for n in proto.graph.node for o in n.output}
    out = []
    for n in proto.graph.node:
        c = prod.get(n.input[1]) if n.op_type == "Reshape" else None
        if c is not None and c.op_type == "Concat":
            out.append([x for i in c.input for x in (
                [int(v) for v in consts[i].ravel()] if i in consts else [None])])
    return out


def test_gpt2_fused_qkv_heads_both_backends():
    """GPT-2 computes q, k, v with one fused projection then splits: heads still prune whole."""
    model, args = build("hf_gpt2")
    a = idapgraph.analyze(model, args)
    plan, heads = _head_plan(a, {0: [2], 1: [0]})
    assert heads[0].members[0].index.shape == (4, 96)
    pruned = idapgraph.apply_plan(model, plan, args)
    zero = idapgraph.apply_plan(model, plan, args, mode="zero")
    assert rel_err(torch_out(zero, args)[0], torch_out(pruned, args)[0]) < 1e-4
    proto = export_onnx(model, args)
    p2 = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(p2, full_check=True)
    assert rel_err(torch_out(pruned, args)[0], onnx_out(p2, _feeds(proto, args))[0]) < 1e-4


class TinyLayer(nn.Module):
    def __init__(self, d: int, h: int, pre_norm: bool):
        super().__init__()
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.h, self.pre = h, pre_norm

    def attn(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.h, -1).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, dim=-1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, d))

    def mlp(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))
        x = self.n1(x + self.attn(x))
        return self.n2(x + self.mlp(x))


class TinyEncoder(nn.Module):
    def __init__(self, pre_norm: bool, n: int = 3, d: int = 32, h: int = 4, skip=()):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.layers = nn.ModuleList(TinyLayer(d, h, pre_norm) for _ in range(n))
        self.head = nn.Linear(d, 5)
        self.skip = set(skip)

    def forward(self, x):
        x = self.inp(x)
        for i, layer in enumerate(self.layers):
            if i not in self.skip:
                x = layer(x)
        return self.head(x)


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre_norm", "post_norm"])
def test_layer_bypass_is_identity_layer(pre_norm):
    """Bypassing a whole layer equals running the model without it, on both backends."""
    from idapgraph.passes import blocks

    torch.manual_seed(0)
    model, args = TinyEncoder(pre_norm).eval(), (torch.randn(1, 6, 8),)
    ref = TinyEncoder(pre_norm, skip={1}).eval()
    ref.load_state_dict(model.state_dict())
    want = torch_out(ref, args)[0]
    proto = export_onnx(model, args)
    for src, extra in ((model, (args,)), (proto, ())):
        found = blocks.find(idapgraph.analyze(src, *extra).graph)
        assert [b.kind for b in found] == ["attention", "mlp"] * 3 + ["layer"] * 3
        out = idapgraph.apply_plan(src, idapgraph.Plan(bypass=["layer1"]), *extra)
        got = torch_out(out, args)[0] if src is model else onnx_out(out, _feeds(proto, args))[0]
        assert rel_err(want, got) < 1e-5
    assert rel_err(want, torch_out(model, args)[0]) > 1e-3  # the layer did something
    n_ln = sum(n.op_type == "LayerNormalization" for n in out.graph.node)
    assert n_ln == 4  # two of six norms went with the layer


@pytest.mark.parametrize("backend", ["fx", "onnx"])
def test_bert_truncate_two_layers(backend):
    model, args = build("hf_bert")  # 2 layers: truncating both leaves the embeddings
    src = model if backend == "fx" else export_onnx(model, args)
    extra = (args,) if backend == "fx" else ()
    r = idapgraph.compress(src, *extra, blocks=1, block_kinds="layer", heal="none")
    assert r.report.blocks_bypassed[0].startswith("layer") and len(r.report.blocks_bypassed) == 1
    assert r.report.flops_after < 0.6 * r.report.flops_before
    if backend == "onnx":
        onnx.checker.check_model(r.model, full_check=True)
        assert sum(n.op_type == "Softmax" for n in r.model.graph.node) == 1
    else:
        assert sum(n.target is torch.nn.functional.softmax or "softmax" in str(n.target)
                   or "scaled_dot" in str(n.target) for n in r.model.graph.nodes) == 1


@pytest.mark.parametrize("route", ["fx", "ts", "dynamo"])
def test_timm_vit_whole_heads(route):
    """timm's ViT/DeiT attention -- one fused qkv projection reshaped to (B, N, 3, heads, dim),
    ``unbind(0)`` into q, k, v (fx: an unbind; legacy ONNX: Split+Squeeze; dynamo ONNX:
    Slice+Squeeze), fused or decomposed SDPA -- prunes whole heads on every route; its
    ``attn_mask=None`` forward argument is traced at its default. Removing equals zeroing."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2,
                              img_size=32, patch_size=8).eval()
    args = (torch.randn(2, 3, 32, 32),)
    src = model if route == "fx" else export_onnx(model, args, dynamo=route == "dynamo")
    a = idapgraph.analyze(src, args if route == "fx" else None)
    plan, heads = _head_plan(a, {0: [1], 1: [0, 2]})
    assert [(h.n_units, h.members[0].index.shape) for h in heads] == [(3, (3, 192))] * 2
    pruned = idapgraph.apply_plan(src, plan, args if route == "fx" else None)
    zero = idapgraph.apply_plan(src, plan, args if route == "fx" else None, mode="zero")
    if route == "fx":
        got, want, ref = torch_out(pruned, args), torch_out(zero, args), torch_out(model, args)
        assert tuple(pruned.get_parameter("blocks.1.attn.qkv.weight").shape) == (192, 192)  # 1 head of 3
    else:
        onnx.checker.check_model(pruned, full_check=True)
        feeds = _feeds(src, args)
        got, want, ref = onnx_out(pruned, feeds), onnx_out(zero, feeds), onnx_out(src, feeds)
    assert got[0].shape == ref[0].shape
    assert rel_err(want[0], got[0]) < 1e-4
    assert rel_err(ref[0], want[0]) > 1e-3  # zeroing the heads did change the function
