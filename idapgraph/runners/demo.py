"""``idapgraph demo``: a built-in ResNet-18 (seeded random weights, nothing downloaded) exported
to ONNX, compressed, and compared before/after."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path


def run_demo(out_dir: Path, flops: float = 0.5) -> int:
    import numpy as np
    import onnx
    import torch
    import torchvision

    from ..api import compress
    from ..files import save, write_atomic
    from ..emit.validate import example_feeds
    from .bench import latency

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    src = out_dir / "resnet18.onnx"
    dst = out_dir / f"resnet18.flops{flops:g}.onnx"
    print(f"exporting torchvision resnet18 (random weights, seed 0) -> {src}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(src), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    print(f"compressing to {flops:g} of the FLOPs (method idap, least-squares healing; the "
          f"weights are random, so calibration uses seeded random inputs) -> {dst}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compress(str(src), flops=flops, calib=np.random.default_rng(0).standard_normal(
            (32, 3, 224, 224)).astype(np.float32))
    elapsed = time.perf_counter() - t0
    save(res.model, dst)
    write_atomic(out_dir / "plan.json", res.plan.to_json())
    original = onnx.load(str(src))
    feeds = example_feeds(original)
    lat_b, lat_a = (latency(m, feeds, runs=20, warmup=3, threads=2).median_ms
                    for m in (original, res.model))
    r = res.report
    rows = [("params", r.params_before, r.params_after), ("FLOPs (MACs)", r.flops_before, r.flops_after),
            ("file size (MB)", os.path.getsize(src) / 1e6, os.path.getsize(dst) / 1e6),
            ("ORT CPU latency (ms, 2 threads, median of 20)", lat_b, lat_a)]
    print()
    print(f"{'':48}{'before':>14}{'after':>14}{'after/before':>14}")
    for name, b, a in rows:
        fmt = "{:>14,.0f}" if isinstance(b, int) else "{:>14.2f}"
        print(f"{name:48}" + fmt.format(b) + fmt.format(a) + f"{a / b:>14.3f}")
    print(f"\ncompression took {elapsed:.1f} s; {r.units_removed} channels removed in "
          f"{r.groups_pruned} of {r.groups} channel groups; output checked with "
          "onnx.checker (full) and onnxruntime")
    print(f"wrote {dst} and {out_dir / 'plan.json'}")
    return 0
