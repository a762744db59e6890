"""How top-1 after training-free compression moves with the number of calibration images, every
size evaluated on the same held-out images (those outside the largest calibration set).

    python3 tools/calibration_size.py --model efficientnet --sizes 200,400 --flops 0.7
    python3 tools/calibration_size.py --model resnet56 --sizes 260,1000 --flops 0.7,0.5
    python3 tools/calibration_size.py --model efficientnet --sizes 200 --mirror   # + mirrored
    python3 tools/calibration_size.py --model resnet56 --sizes 260 --flops 0.5 --shuffle 1

EfficientNet-Lite0 on the labelled ImageNet sample: size ``200·k`` calibrates on the images
``i % 5 < k`` (``make bench``'s 200 are ``k = 1``), in file order. CIFAR-10 ResNet-56: size ``n``
calibrates on the first ``n / 10`` test images of every class (``make bench``'s 260 are the
first 26). ``--mirror`` adds each calibration image's left-right mirror after it (labels are
never used). ``--shuffle SEED`` hands the calibration images over in a seeded random order
instead of file order (the test files are sorted by class). The torch route:
``idapgraph.compress(model, example, flops=F, calib=images)``, defaults otherwise; one thread.
Data: ``../shared/data`` (``IDAPGRAPH_DATA``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _efficientnet(sizes: list[int]):
    """(model, {size: calibration images}, evaluation images, labels, top-k)."""
    import cifar_resnet
    from idapgraph.runners.demo import efficientnet_lite0, imagenet_sample

    xc, xe, ye = imagenet_sample(cifar_resnet.DATA / "imagenet-sample")
    n = len(xc) + len(xe)
    i = np.arange(n)
    x = np.empty((n, *xc.shape[1:]), dtype=xc.dtype)
    y = np.full(n, -1)
    x[i % 5 == 0], x[i % 5 != 0], y[i % 5 != 0] = xc, xe, ye
    if any(s % len(xc) or not 0 < s // len(xc) < 5 for s in sizes):
        raise SystemExit(f"EfficientNet sizes are multiples of {len(xc)} below {n}")
    calib = {s: x[i % 5 < s // len(xc)] for s in sizes}
    held = i % 5 >= max(sizes) // len(xc)
    return efficientnet_lite0(), calib, x[held], y[held], (1, 5)


def _resnet56(sizes: list[int]):
    import cifar_resnet

    if any(s % 10 or not 0 < s < 10000 for s in sizes):
        raise SystemExit("ResNet-56 sizes are multiples of 10 below 10,000")
    calib = {s: cifar_resnet.images(cifar_resnet.balanced(s))[0] for s in sizes}
    rest = sorted(set(range(10000)) - set(cifar_resnet.balanced(max(sizes))))
    xe, ye = cifar_resnet.images(rest)
    return cifar_resnet.pretrained(56), calib, xe, ye, (1,)


def _topk(model, x: np.ndarray, y: np.ndarray, ks, batch: int = 50) -> list[float]:
    import torch
    from bench.labelled import topk

    with torch.no_grad():
        out = np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                              for i in range(0, len(x), batch)])
    return topk(out, y, ks)


def main() -> None:
    import torch

    import idapgraph

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("efficientnet", "resnet56"), required=True)
    p.add_argument("--sizes", default="200,400")
    p.add_argument("--flops", default="0.7")
    p.add_argument("--mirror", action="store_true")
    p.add_argument("--shuffle", type=int, default=None, metavar="SEED")
    a = p.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in a.sizes.split(",")]
    model, calib, xe, ye, ks = (_efficientnet if a.model == "efficientnet" else _resnet56)(sizes)
    model.eval()
    heads = " | ".join(f"top-{k} %" for k in ks)
    print(f"held-out images: {len(xe)}\n\n| calibration | FLOPs target | {heads} | compress s |"
          f"\n|---|---|{'---|' * len(ks)}---|")
    print(f"| original | — | {' | '.join(f'{v:.2f}' for v in _topk(model, xe, ye, ks))} | — |")
    for s in sizes:
        xc = calib[s]
        if a.shuffle is not None:
            xc = xc[np.random.default_rng(a.shuffle).permutation(len(xc))]
        if a.mirror:
            xc = np.stack([xc, xc[..., ::-1]], 1).reshape(-1, *xc.shape[1:]).copy()
        for f in (float(t) for t in a.flops.split(",")):
            t0 = time.perf_counter()
            res = idapgraph.compress(model, (torch.from_numpy(xc[:1]),), flops=f, calib=xc)
            took = time.perf_counter() - t0
            acc = " | ".join(f"{v:.2f}" for v in _topk(res.model, xe, ye, ks))
            how = (" mirrored" if a.mirror else "") + (
                f" shuffled {a.shuffle}" if a.shuffle is not None else "")
            print(f"| {len(xc)}{how} | {f} | {acc} | {took:.0f} |", flush=True)


if __name__ == "__main__":
    main()
