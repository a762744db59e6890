"""CIFAR-10 top-1 of the pretrained ResNet-20 and ResNet-56 after training-free compression:
idapgraph (both routes, latency targets, baselines) against Torch-Pruning with and without
BatchNorm re-estimation, every row with its latency ratio and compile time.

    python3 -m tools.bench.cifar [--quick] [--out DIR]

Data: ``../shared/data`` (the CIFAR-10 test set, 10,000 labelled images, and the pretrained
``resnet{20,56}`` state dicts; ``IDAPGRAPH_DATA`` points elsewhere). Calibration: the first 26
images of every class (260); evaluation: the other 9,740. Rows per FLOPs target: idapgraph
defaults through the torch API (fx) and the ONNX route (the CLI's), ``--latency`` targets
(ONNX), the baselines magnitude / random / taylor through idapgraph (same healing), Torch-Pruning
1.6 MetaPruner L2 and Taylor (global ranking, ratio bisected to the FLOPs; the residual-stream
layers ignored since it cannot trace the zero-padding shortcut) and each of those followed by
BatchNorm re-estimation on the same 260 images. Latency: onnxruntime CPU, 1 thread, batch 1,
each model timed in turns with the original (ratio < 1: faster).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

from . import common
from .common import Section, Table
from .peers import torch_pruning

sys.path.insert(0, str(common.ROOT / "tools"))
import cifar_accuracy  # noqa: E402
import cifar_resnet  # noqa: E402


class Task:
    """One pretrained ResNet, its export, the data and the original's figures."""

    def __init__(self, depth: int) -> None:
        import torch
        from helpers import export_onnx

        self.depth = depth
        cal = cifar_resnet.balanced(260)
        ev = sorted(set(range(10000)) - set(cal))
        self.xc, _ = cifar_resnet.images(cal)
        self.xe, self.ye = cifar_resnet.images(ev)
        self.model = cifar_resnet.pretrained(depth)
        self.ex = (torch.from_numpy(self.xc[:1]),)
        self.proto = export_onnx(self.model, self.ex, input_names=["x"],
                                 dynamic_axes={"x": {0: "n"}})
        self.flops, self.params = common.flops(self.proto), common.params(self.proto)

    def top1(self, m) -> float:
        import torch

        if isinstance(m, torch.nn.Module):
            return 100 * cifar_resnet.accuracy(m, self.xe, self.ye)
        from idapgraph.emit.validate import session

        s = session(m, threads=2)
        name = s.get_inputs()[0].name
        preds = np.concatenate([s.run(None, {name: self.xe[i:i + 500]})[0].argmax(1)
                                for i in range(0, len(self.xe), 500)])
        return 100 * float(np.mean(preds == self.ye))

    def onnx(self, m):
        import torch
        from helpers import export_onnx

        return m if not isinstance(m, torch.nn.Module) else export_onnx(
            _wrapped(m).eval(), self.ex, input_names=["x"], dynamic_axes={"x": {0: "n"}})

    def row(self, t: Table, target, name: str, m, seconds: float) -> tuple[float, float]:
        """Add a row; returns (latency ratio, top-1)."""
        from idapgraph.runners.bench import paired

        p = self.onnx(m)
        base, got = paired([self.proto, p], [{"x": self.xe[:1]}] * 2, runs=30, warmup=5,
                           threads=common.LATENCY_THREADS, block=10, settle=2, min_s=2)
        acc = self.top1(m)
        t.add(f"ResNet-{self.depth}", target, name, f"{acc:.2f}", common.flops(p) / self.flops,
              common.params(p) / self.params, f"{got / base:.3f}", f"{seconds:.1f}")
        return got / base, acc


def _wrapped(m):
    """An fx GraphModule inside a plain module (the TorchScript exporter reads ``.graph``)."""
    import torch

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    return Wrap()


def _ours(task: Task, target: float, quick: bool):
    """(label, model, seconds) of every idapgraph row at ``target``."""
    import idapgraph

    t0 = time.perf_counter()
    yield "idapgraph defaults (torch API)", idapgraph.compress(
        copy.deepcopy(task.model), task.ex, flops=target, calib=task.xc).model, \
        time.perf_counter() - t0
    t0 = time.perf_counter()
    yield "idapgraph defaults (ONNX route)", idapgraph.compress(
        task.proto, flops=target, calib=task.xc).model, time.perf_counter() - t0
    for method in () if quick else ("magnitude", "random", "taylor"):
        t0 = time.perf_counter()
        yield f"idapgraph method={method}", idapgraph.compress(
            copy.deepcopy(task.model), task.ex, flops=target, calib=task.xc, method=method,
            loss=_taylor_loss(task) if method == "taylor" else None).model, \
            time.perf_counter() - t0


def _taylor_loss(task: Task):
    """Cross-entropy against the original's own predictions on the batch (no labels used)."""
    import torch
    import torch.nn.functional as F

    def loss(out, args):
        with torch.no_grad():
            y = task.model(*args).argmax(1)
        return F.cross_entropy(out, y)

    return loss


def _peers(task: Task, target: float, quick: bool):
    """(label, model, seconds) of Torch-Pruning L2 / Taylor, each also with BN re-estimation."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(task.xc)
    with torch.no_grad():
        y = task.model(x).argmax(1)
    grads = lambda m: F.cross_entropy(m(x), y).backward()  # noqa: E731
    for imp in ("magnitude",) if quick else ("magnitude", "taylor"):
        t0 = time.perf_counter()
        r = torch_pruning(task.model, task.ex, target, imp, gradients=grads,
                          ignored=cifar_accuracy.pad_shortcut_ignored)
        took = time.perf_counter() - t0
        name = {"magnitude": "L2", "taylor": "Taylor"}[imp]
        if r.model is None:
            yield f"Torch-Pruning {name}: failed ({r.error})", None, took
            continue
        yield f"Torch-Pruning {name}", r.model, took
        yield f"Torch-Pruning {name} + BN re-est.", cifar_accuracy.bn_reestimate(r.model, x), took


def run(quick: bool, out: Path) -> Section:
    import idapgraph

    t0 = time.time()
    common.setup(1)
    depths = (20,) if quick else (20, 56)
    targets = (0.5,) if quick else (0.7, 0.5, 0.3)
    t = Table("model", "target", "method", "top-1 %", "FLOPs kept", "params kept",
              "latency ratio", "compile s")
    plots = []
    for depth in depths:
        task, series = Task(depth), {}
        t.add(f"ResNet-{depth}", "—", "original", f"{task.top1(task.model):.2f}", 1.0, 1.0,
              "1.000", "—")
        for target in targets:
            for label, m, took in (*_ours(task, target, quick), *_peers(task, target, quick)):
                if m is None:
                    t.add(f"ResNet-{depth}", target, label, *[None] * 5)
                    continue
                ratio, acc = task.row(t, target, label, m, took)
                series.setdefault(label, []).append((ratio, acc))
        for budget in () if quick else (0.7, 0.5):
            t1 = time.perf_counter()
            r = idapgraph.compress(task.proto, latency=budget, calib=task.xc)
            ratio, acc = task.row(t, f"latency {budget}", "idapgraph --latency (ONNX)", r.model,
                                  time.perf_counter() - t1)
            series.setdefault("idapgraph --latency", []).append((ratio, acc))
        plots.append(common.plot(
            out / f"cifar_resnet{depth}.png", f"CIFAR-10 ResNet-{depth}: top-1 vs latency",
            "top-1 %", series, task.top1(task.model),
            xlabel="latency / original's (onnxruntime CPU, batch 1)", xlim=None))
    s = Section("CIFAR-10 ResNet-20 / ResNet-56 (pretrained): top-1 on real labels, "
                "training-free")
    s.blocks += [
        "Calibration: 260 test images (26 per class); evaluation: the other 9,740, labelled. "
        "Latency ratio: onnxruntime CPU, 1 thread, batch 1, timed in turns with the original "
        "(< 1: faster); compile s: the compress call (Torch-Pruning: its ratio bisection, about "
        "12 prunings). Taylor rows (ours and TP): cross-entropy against the original's own "
        "predictions on the calibration images (no labels).", t.markdown()]
    s.plots += plots
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
