"""Where ``compress`` spends its time: wall and CPU seconds per stage of the pipeline, and the
functions with the most cumulative time (cProfile), on a model of the compile-cost benchmarks.

    python3 tools/profile_compress.py resnet56 [--backend fx|onnx] [--method idap]
                                      [--heal lsq] [--flops 0.5] [--calib 256] [--top 25]

Models: ``resnet20/32/44/56`` (pretrained CIFAR-10, ../shared/data; calibration on test images
0..N-1), ``resnet110`` (the same architecture, random weights), ``resnet50`` (torchvision,
random weights, 224x224 random calibration images).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import idapgraph  # noqa: E402
from idapgraph import stages  # noqa: E402


def build(name: str, n_calib: int):
    """(module, example input, calibration array) of ``name``."""
    import cifar_resnet

    if name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        x, _ = cifar_resnet.images(range(n_calib))
        return cifar_resnet.pretrained(int(name[6:])), torch.from_numpy(x[:1]), x
    if name == "resnet110":
        x, _ = cifar_resnet.images(range(n_calib))
        return cifar_resnet.resnet(110), torch.from_numpy(x[:1]), x
    if name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        calib = np.random.default_rng(0).standard_normal((n_calib, 3, 224, 224), dtype=np.float32)
        return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224), calib
    raise SystemExit(f"unknown model {name!r}")


def timed_stages() -> dict[str, list[float]]:
    """Wrap every stage of ``compress`` (and its preparation) to record wall and CPU seconds."""
    spent: dict[str, list[float]] = {}

    def wrap(name, fn):
        def run(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                got = spent.setdefault(name, [0.0, 0.0])
                got[0] += time.perf_counter() - w
                got[1] += time.process_time() - c
        return run

    stages.prepare = wrap("prepare (analyze)", stages.prepare)
    stages.STAGES = tuple(wrap(f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}", fn)
                          for fn in stages.STAGES)
    stages.report.run = wrap("report", stages.report.run)
    return spent


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
    module, x, calib = build(a.model, a.calib)
    model = module
    if a.backend == "onnx":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import export_onnx

        model = export_onnx(module, (x,), input_names=["x"],  # batch axis symbolic, as exported
                            dynamic_axes={"x": {0: "batch"}})  # for serving usually is
    spent = timed_stages()
    prof = cProfile.Profile()
    w, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.enable()
        res = idapgraph.compress(model, (x,) if a.backend == "fx" else None, flops=a.flops,
                                 method=a.method, heal=a.heal, calib=calib)
        prof.disable()
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    print(f"{a.model} ({a.backend}, {a.method}, heal {a.heal}, {a.calib} calibration images): "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU; FLOPs kept {res.report.flops_ratio:.3f}")
    print("| stage | wall s | CPU s |\n|---|---:|---:|")
    for name, (sw, sc) in spent.items():
        print(f"| {name} | {sw:.2f} | {sc:.2f} |")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
