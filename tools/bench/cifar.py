"""CIFAR-10 top-1 of the pretrained ResNet-20 and ResNet-56 after training-free compression:
idapgraph (both routes, latency targets, baselines) against Torch-Pruning with and without
BatchNorm re-estimation, every row with its latency ratio and compile time.

    python3 -m tools.bench.cifar [--quick] [--out DIR]
    IDAPGRAPH_CIFAR_DEPTHS=56 python3 -m tools.bench.cifar   # one model only (default 20,56)
    IDAPGRAPH_BENCH_TARGETS=0.7,0.5 python3 -m tools.bench.cifar   # default 0.7,0.5,0.3

Data: ``../shared/data`` (the CIFAR-10 test set, 10,000 labelled images, and the pretrained
``resnet{20,56}`` state dicts; ``IDAPGRAPH_DATA`` points elsewhere). Calibration: the first 26
images of every class (260); evaluation: the other 9,740. Rows per FLOPs target: idapgraph
defaults through the torch API (fx) and the ONNX route (the CLI's), ``--latency`` targets
(ONNX), the baselines magnitude / random / taylor through idapgraph (same healing), Torch-Pruning
1.6 MetaPruner L2 and Taylor (global ranking, ratio bisected to the FLOPs; the residual-stream
layers ignored since it cannot trace the zero-padding shortcut) and each of those followed by
BatchNorm re-estimation on the same 260 images. Latency: onnxruntime CPU, 1 thread, batch 1,
each model timed in turns with the original (ratio < 1: faster).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import common, labelled
from .common import Section


def task(depth: int) -> labelled.Task:
    import cifar_resnet

    cal = cifar_resnet.balanced(260)
    xc, _ = cifar_resnet.images(cal)
    xe, ye = cifar_resnet.images(sorted(set(range(10000)) - set(cal)))
    return labelled.Task(f"ResNet-{depth}", cifar_resnet.pretrained(depth), xc, xe, ye)


def run(quick: bool, out: Path) -> Section:
    from cifar_accuracy import pad_shortcut_ignored

    t0 = time.time()
    common.setup(1)
    depths = (20,) if quick else tuple(
        int(d) for d in os.environ.get("IDAPGRAPH_CIFAR_DEPTHS", "20,56").split(","))
    targets = (0.5,) if quick else common.targets((0.7, 0.5, 0.3))
    plots, t = [], None
    for depth in depths:
        tk, series = task(depth), {}
        t = t or tk.table()
        _, top1 = tk.row(t, "—", "original", tk.model, None)
        for target in targets:
            rows = (*labelled.ours(tk, target, methods=() if quick else
                                   ("magnitude", "random", "taylor"), extra=() if quick else
                                   [labelled.SCORES_ONLY]),
                    *labelled.peers(tk, target, ("magnitude",) if quick else
                                    ("magnitude", "taylor"), ignored=pad_shortcut_ignored))
            labelled.add_rows(tk, t, target, rows, series)
        labelled.latency_rows(tk, t, () if quick else (0.7, 0.5), series)
        plots.append(common.plot(
            out / f"cifar_resnet{depth}.png", f"CIFAR-10 ResNet-{depth}: top-1 vs latency",
            "top-1 %", series, top1,
            xlabel="latency / original's (onnxruntime CPU, batch 1)", xlim=None))
    s = Section("CIFAR-10 ResNet-20 / ResNet-56 (pretrained): top-1 on real labels, "
                "training-free")
    s.blocks += [
        "Calibration: 260 test images (26 per class); evaluation: the other 9,740, labelled. "
        "Latency ratio: onnxruntime CPU, 1 thread, batch 1, timed in turns with the original "
        "(< 1: faster); compile s: the compress call (Torch-Pruning: its ratio bisection, about "
        "12 prunings). Taylor rows (ours and TP): cross-entropy against the original's own "
        "predictions on calibration images (no labels).", t.markdown()]
    s.plots += plots
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
