"""Latency targets on transformers with a dynamic sequence axis (`--dims`): random-weight BERT
and GPT-2 (tests/zoo.py: 2 layers, hidden 128), exported by both torch exporters with the
sequence symbolic, timed at sequence 1 (no ``dims``) and at ``--sequence``.

    python3 tools/bench_latency_dims.py [--sequence 128] [--target 0.5]

Per model and exporter: ``profile`` without and with ``dims`` (whole-model ms, tables' sum),
then ``compress(latency=R, method="magnitude", heal="none", dims={name: sequence})``: the
measured ratio, in turns with the original at that size, and what was bypassed. onnxruntime
CPU, 1 thread. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import idapgraph  # noqa: E402
from helpers import export_onnx  # noqa: E402
from idapgraph.frontends.onnx_dims import input_dims  # noqa: E402
from zoo import build  # noqa: E402


def exported(arch: str, dynamo: bool):
    model, args = build(arch)
    if dynamo:
        from torch.export import Dim

        s = Dim("sequence", min=2, max=512)
        return export_onnx(model, args, dynamo=True, dynamic_shapes=({1: s}, {1: s}))
    axes = {0: "batch", 1: "sequence"}
    return export_onnx(model, args, input_names=["input_ids", "attention_mask"],
                       dynamic_axes={"input_ids": axes, "attention_mask": axes})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequence", type=int, default=128)
    ap.add_argument("--target", type=float, default=0.5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(f"| model | exporter | symbolic dims | model ms (sequence 1) | model ms (sequence "
          f"{args.sequence}) | tables ms (1 / {args.sequence}) | latency {args.target}: ratio "
          "| bypassed | groups pruned | s |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for arch in ("hf_bert", "hf_gpt2"):
        for dynamo in (False, True):
            proto = exported(arch, dynamo)
            names = input_dims(proto)
            dims = {names[-1]: args.sequence}
            t0 = time.time()
            one = idapgraph.profile(proto)
            big = idapgraph.profile(proto, dims=dims)
            res = idapgraph.compress(proto, latency=args.target, method="magnitude",
                                     heal="none", dims=dims)
            lt = res.report.latency_target
            print(f"| {arch[3:]} | {'dynamo' if dynamo else 'TorchScript'} | {', '.join(names)} "
                  f"| {one['model_ms']:.3f} | {big['model_ms']:.3f} | {one['tables_ms']:.3f} / "
                  f"{big['tables_ms']:.3f} | {lt['ratio']:.3f} | {', '.join(res.plan.bypass) or '—'} "
                  f"| {res.report.groups_pruned} | {time.time() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
