"""What the real-label sections share (CIFAR-10 ResNets, EfficientNet-Lite0 on the ImageNet
sample): a task -- a pretrained model, its ONNX export, a fixed calibration / evaluation split
with labels -- rows carrying top-k accuracy, FLOPs and parameters kept, the onnxruntime latency
ratio timed in turns with the original and the compile time, and the row sets every such
section has (idapgraph's defaults on both routes, the baselines through idapgraph, Torch-Pruning
with and without BatchNorm re-estimation, ``--latency`` targets)."""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np

from . import common
from .common import Table
from .peers import torch_pruning

HEADERS = ("FLOPs kept", "params kept", "latency ratio", "compile s")


class Task:
    """A pretrained classifier and its labelled split. ``topk``: the accuracies reported."""

    def __init__(self, name: str, model, xc: np.ndarray, xe: np.ndarray, ye: np.ndarray, *,
                 topk: tuple[int, ...] = (1,), batch: int = 500) -> None:
        import torch

        self.name, self.model, self.topk, self.batch = name, model.eval(), topk, batch
        self.xc, self.xe, self.ye = xc, xe, ye
        self.ex = (torch.from_numpy(xc[:1]),)
        self.proto = self.onnx(self.model)
        self.flops, self.params = common.flops(self.proto), common.params(self.proto)

    def table(self) -> Table:
        return Table("model", "target", "method", *[f"top-{k} %" for k in self.topk], *HEADERS)

    def logits(self, m) -> np.ndarray:
        """``m``'s outputs on the evaluation images (a torch module or an ONNX model)."""
        import torch

        parts = range(0, len(self.xe), self.batch)
        if isinstance(m, torch.nn.Module):
            with torch.no_grad():
                return np.concatenate([m(torch.from_numpy(self.xe[i:i + self.batch])).numpy()
                                       for i in parts])
        from idapgraph.emit.validate import session

        s = session(m, threads=2)
        name = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {name: self.xe[i:i + self.batch]})[0] for i in parts])

    def accuracy(self, m) -> list[float]:
        """Top-k accuracies (%) of ``m`` on the evaluation images, one per ``topk``."""
        return topk(self.logits(m), self.ye, self.topk)

    def onnx(self, m):
        """``m`` as ONNX (a torch module exported with a dynamic batch; ONNX as it is)."""
        import torch

        return export(m, self.ex) if isinstance(m, torch.nn.Module) else m

    def row(self, t: Table, target, name: str, m, seconds: float) -> tuple[float, float]:
        """Add a row for ``m``; returns (latency ratio, top-1)."""
        from idapgraph.runners.bench import paired

        p = self.onnx(m)
        base, got = paired([self.proto, p], [{"x": self.xe[:1]}] * 2, runs=30, warmup=5,
                           threads=common.LATENCY_THREADS, block=10, settle=2, min_s=2)
        acc = self.accuracy(m)
        t.add(self.name, target, name, *[f"{a:.2f}" for a in acc], common.flops(p) / self.flops,
              common.params(p) / self.params, f"{got / base:.3f}",
              "—" if seconds is None else f"{seconds:.1f}")
        return got / base, acc[0]

    def failed(self, t: Table, target, name: str) -> None:
        t.add(self.name, target, name, *[None] * (len(self.topk) + len(HEADERS)))


def topk(logits: np.ndarray, labels: np.ndarray, ks) -> list[float]:
    """Top-k accuracies (%) of class scores ``logits`` (samples, classes), one per ``ks``."""
    best = np.argsort(-logits, axis=1)
    return [100 * float(np.mean((best[:, :k] == labels[:, None]).any(1))) for k in ks]


def export(m, example: tuple):
    """A torch module (or fx GraphModule) as ONNX: input ``x`` with a symbolic batch ``n``."""
    from helpers import export_onnx

    return export_onnx(_wrapped(m).eval(), example, input_names=["x"],
                       dynamic_axes={"x": {0: "n"}})


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


def self_labels(task: Task) -> Callable:
    """Cross-entropy against the original's own predictions on the batch: the Taylor loss of
    every row here (no labels used)."""
    import torch
    import torch.nn.functional as F

    def loss(out, args):
        with torch.no_grad():
            y = task.model(*args).argmax(1)
        return F.cross_entropy(out, y)

    return loss


# the row of the counts from the scores alone (the default before the thirteenth session)
SCORES_ONLY = ("idapgraph scores-only counts", {"measure_groups": False})


def ours(task: Task, target: float, methods=("magnitude", "random", "taylor"), extra=()):
    """(label, model, seconds) of idapgraph's rows at ``target``: the defaults through the torch
    API and the ONNX route (with calibration data the channel counts are allocated by measured
    group losses, since the thirteenth session), then each of ``methods`` and each
    ``(label, options)`` of ``extra`` through the torch API. The baseline methods' rows keep
    the counts from their own scores (``measure_groups=False``: the criterion alone, as they
    were before, and minutes instead of an hour per EfficientNet row)."""
    import idapgraph

    t0 = time.perf_counter()
    yield "idapgraph defaults (torch API)", idapgraph.compress(
        copy.deepcopy(task.model), task.ex, flops=target, calib=task.xc).model, \
        time.perf_counter() - t0
    t0 = time.perf_counter()
    yield "idapgraph defaults (ONNX route)", idapgraph.compress(
        task.proto, flops=target, calib=task.xc).model, time.perf_counter() - t0
    runs = [(f"idapgraph method={m} (scores-only counts)",
             {"method": m, "measure_groups": False}) for m in methods] + list(extra)
    for label, kw in runs:
        if kw.get("method") == "taylor":
            kw = {**kw, "loss": self_labels(task)}
        t0 = time.perf_counter()
        yield label, idapgraph.compress(copy.deepcopy(task.model), task.ex, flops=target,
                                        calib=task.xc, **kw).model, time.perf_counter() - t0


def peers(task: Task, target: float, imps=("magnitude", "taylor"), ignored=None,
          grad_batch: int = 64):
    """(label, model, seconds) of Torch-Pruning L2 / Taylor at ``target`` FLOPs, each also
    followed by BatchNorm re-estimation on the calibration images (None model: it failed)."""
    import torch
    import torch.nn.functional as F
    from cifar_accuracy import bn_reestimate

    x = torch.from_numpy(task.xc[:grad_batch])
    with torch.no_grad():
        y = task.model(x).argmax(1)
    grads = lambda m: F.cross_entropy(m(x), y).backward()  # noqa: E731
    for imp in imps:
        t0 = time.perf_counter()
        r = torch_pruning(task.model, task.ex, target, imp, gradients=grads, ignored=ignored)
        took = time.perf_counter() - t0
        name = {"magnitude": "L2", "taylor": "Taylor"}[imp]
        if r.model is None:
            yield f"Torch-Pruning {name}: failed ({r.error})", None, took
            continue
        yield f"Torch-Pruning {name}", r.model, took
        yield (f"Torch-Pruning {name} + BN re-est.",
               bn_reestimate(r.model, torch.from_numpy(task.xc)), took)


def add_rows(task: Task, t: Table, target, rows, series: dict) -> None:
    """Time, score and add every (label, model, seconds) of ``rows``; the plot's points."""
    for label, m, took in rows:
        if m is None:
            task.failed(t, target, label)
            continue
        ratio, acc = task.row(t, target, label, m, took)
        series.setdefault(label, []).append((ratio, acc))


def latency_rows(task: Task, t: Table, budgets, series: dict) -> None:
    """``idapgraph.compress(onnx, latency=R)`` rows (the ONNX route, measured tables)."""
    import idapgraph

    for budget in budgets:
        t1 = time.perf_counter()
        r = idapgraph.compress(task.proto, latency=budget, calib=task.xc)
        ratio, acc = task.row(t, f"latency {budget}", "idapgraph --latency (ONNX)", r.model,
                              time.perf_counter() - t1)
        series.setdefault("idapgraph --latency", []).append((ratio, acc))
