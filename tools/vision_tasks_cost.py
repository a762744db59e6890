"""Detection and segmentation models through both routes (issue 26): torchvision's Faster R-CNN
(MobileNetV3-Large 320 FPN) and DeepLabV3 (MobileNetV3-Large), random weights (nothing is
downloaded), compressed to ``--flops 0.5`` with the default method on the torch route
(``idapgraph.compress`` on the module: the detector by its parts) and the ONNX route (the CLI on
the TorchScript export). Each row: wall seconds of the compress call, whole-model FLOPs kept,
whether the output is valid (ONNX: full checker + one onnxruntime run; fx: runs) with the
original's output shapes (detectors: the same outputs and ranks; box counts depend on the data).

    python3 tools/vision_tasks_cost.py [--models frcnn,deeplab] [--threads 2] [--size N]

``--size``: the input side (default: the model's own, 320 for the detector, 520 for DeepLabV3).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import idapgraph  # noqa: E402
from idapgraph.emit.validate import check_onnx, flatten_outputs  # noqa: E402

SIZES = {"frcnn": 320, "deeplab": 520}


def build(name: str, size: int):
    torch.manual_seed(0)
    if name == "frcnn":
        m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, min_size=size, max_size=size)
        return m.eval(), ([torch.rand(3, size, size)],)
    m = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=True)
    return m.eval(), (torch.rand(1, 3, size, size),)


def shapes(out) -> list[tuple]:
    return [tuple(o.shape) for o in flatten_outputs(out)]


def torch_row(name: str, size: int) -> dict:
    m, args = build(name, size)
    with torch.no_grad():
        want = shapes(m(*args))
    t = time.perf_counter()
    r = idapgraph.compress(m, args, flops=0.5)
    sec = time.perf_counter() - t
    with torch.no_grad():
        got = shapes(r.model(*args))
    same = [len(s) for s in got] == [len(s) for s in want] if name == "frcnn" else got == want
    return {"route": f"torch ({r.report.backend})", "s": sec, "flops": r.report.flops_ratio,
            "valid": True, "shapes": same}


def onnx_row(name: str, size: int, folder: Path, threads: int) -> dict:
    m, args = build(name, size)
    src, dst = folder / f"{name}.onnx", folder / f"{name}_small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, args, str(src), dynamo=False, opset_version=17)
    cmd = [sys.executable, "-m", "idapgraph", "compress", str(src), "-o", str(dst),
           "--flops", "0.5", "--threads", str(threads), "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    sec = time.perf_counter() - t
    if proc.returncode != 0:
        return {"route": "ONNX (CLI)", "s": sec, "flops": None, "valid": False,
                "shapes": False, "error": proc.stderr.strip().splitlines()[-1:]}
    import json

    rep = json.loads(proc.stdout)
    small, orig = onnx.load(str(dst)), onnx.load(str(src))
    got = check_onnx(small)
    want = check_onnx(orig)
    same = [len(s) for s in got] == [len(s) for s in want] if name == "frcnn" else got == want
    return {"route": "ONNX (CLI)", "s": sec, "flops": rep["flops_ratio"], "valid": True,
            "shapes": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="frcnn,deeplab")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| model | input | route | compress s | FLOPs kept | valid | output shapes kept |")
    print("|---|---|---|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            size = a.size or SIZES[name]
            for row in (torch_row(name, size), onnx_row(name, size, Path(tmp), a.threads)):
                flops = "-" if row["flops"] is None else f"{row['flops']:.3f}"
                print(f"| {name} | {size} | {row['route']} | {row['s']:.1f} | {flops} | "
                      f"{row['valid']} | {row['shapes']} |{row.get('error', '')}", flush=True)


if __name__ == "__main__":
    main()
