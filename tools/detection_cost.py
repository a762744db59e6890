"""Compile cost of ``idapgraph compress`` on a torchvision detector (issue 23): builds
``fasterrcnn_mobilenet_v3_large_320_fpn`` with random weights (nothing is downloaded), exports it
to ONNX and times the CLI on it, wall seconds of the whole subprocess.

    python3 tools/detection_cost.py [--size 320] [--exporter torchscript|dynamo|both]
                                    [--out DIR] [--profile] [-- EXTRA CLI ARGS]

Runs ``python -m idapgraph compress model.onnx -o out.onnx --flops 0.5`` (idap, least-squares
healing) and the same with ``--method magnitude --heal none``; each output that is written is
checked with ``onnx.checker.check_model(full_check=True)`` and run once in onnxruntime.
``--profile`` runs the first command in-process under cProfile instead (the 25 functions with
the most cumulative time). ``--size`` is the fixed input side (1x3xSxS) and the detector's
``min_size``/``max_size``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]


def build(size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size)
    return m.eval()


def export(model: torch.nn.Module, size: int, exporter: str, path: Path) -> float:
    """Export to ``path``; returns the seconds it took."""
    x = torch.rand(1, 3, size, size)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":  # its failure report (the whole graph) goes to stdout
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                prog = torch.onnx.export(model, ([x[0]],), dynamo=True, verbose=False)
            prog.save(str(path))
        else:
            torch.onnx.export(model, ([x[0]],), str(path), dynamo=False, opset_version=17,
                              input_names=["image"])
    return time.perf_counter() - t


def check(path: Path) -> str:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).random(
        [d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
        for i in sess.get_inputs()}
    outs = sess.run(None, feeds)
    return "checks ok, outputs " + ", ".join(str(o.shape) for o in outs)


def run_cli(src: Path, dst: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "idapgraph", "compress", str(src), "-o", str(dst),
           "--flops", "0.5", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    print(f"  exit {r.returncode}, {wall:.1f} s wall")
    print("  stderr (last lines):", *r.stderr.strip().splitlines()[-6:], sep="\n    ")
    if r.returncode == 0:
        print("  " + check(dst))


def profile(src: Path, top: int) -> None:
    import idapgraph

    prof = cProfile.Profile()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.enable()
        res = idapgraph.compress(str(src), flops=0.5)
        prof.disable()
    print(f"in-process compress: {time.perf_counter() - t:.1f} s, "
          f"FLOPs kept {res.report.flops_ratio:.3f}")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo", "both"])
    ap.add_argument("--out", default="detection_out")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    model = build(a.size)
    for exporter in (["torchscript", "dynamo"] if a.exporter == "both" else [a.exporter]):
        src = out / f"frcnn_{exporter}.onnx"
        try:
            print(f"{exporter} export: {export(model, a.size, exporter, src):.1f} s")
        except Exception as e:  # noqa: BLE001 - report the exporter's failure and go on
            cause = [ln for ln in str(e).splitlines() if "Could not guard" in ln or "Caused by" in ln]
            print(f"{exporter} export failed: {type(e).__name__}: {' '.join(cause)[:400]}")
            continue
        print("  original " + check(src))
        if a.profile:
            profile(src, a.top)
            continue
        run_cli(src, out / f"frcnn_{exporter}_small.onnx", a.extra)
        run_cli(src, out / f"frcnn_{exporter}_mag.onnx", ["--method", "magnitude", "--heal",
                                                          "none", *a.extra])


if __name__ == "__main__":
    main()
