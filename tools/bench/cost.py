"""Compiler cost: wall time and peak memory of one ``idapgraph.compress`` call against
Torch-Pruning (``MetaPruner``: its DependencyGraph build, one pruning step and a forward pass of
the pruned model) on the same models in the same run, and how compress grows with depth, width
and graph size.

    python3 -m tools.bench.cost [--quick]
    python3 -m tools.bench.cost --child TOOL MODEL     # one measurement, JSON on stdout

TOOL: ``ours-fx`` / ``ours-onnx`` (``method='magnitude', heal='none'``: the compiler alone, on
the torch module / its TorchScript export), ``ours-lsq`` (fx, the defaults: idap scores and
least-squares healing on 256 calibration images), ``tp``. MODEL: a torchvision classifier name,
``cifar:D[xW][b]`` (the CIFAR ResNet of ``tools/cifar_resnet.py``: depth D, channels times W,
``b``: 1x1-conv projection shortcuts instead of zero padding; random weights, 32×32) or ``scale:N`` (the synthetic ONNX graph of
``tests/scale_models.py`` with about N nodes; ONNX only). Every measurement runs in its own
child process, on ``THREADS`` threads: it builds the model (and its export), runs it once and
runs the tool once on a two-conv net (imports, lazy initialisation; none of it timed), records its RSS, then times the measured step and reports its wall time, the peak RSS (``VmHWM``) and the
peak's excess over the RSS before the step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import common
from .common import Section, Table

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
DEPTHS = (20, 56, 110)
WIDTHS = (1, 2, 4)
SIZES = (1000, 10000, 50000)
FLOPS = 0.5      # idapgraph's target
TP_RATIO = 0.3   # Torch-Pruning's channel ratio (about half the FLOPs on these CNNs)
CALIB = 256      # calibration images of ``ours-lsq``
THREADS = 2      # the machine's cores, as the compile-cost targets are stated


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _build(model: str):
    """(torch module or ONNX model, example inputs or None)."""
    import torch

    if model.startswith("scale:"):
        import scale_models

        return scale_models.build(int(model.split(":")[1])), None
    if model.startswith("cifar:"):
        import cifar_resnet

        spec = model.split(":")[1]
        depth, _, width = spec.rstrip("b").partition("x")
        net = cifar_resnet.resnet(int(depth), width=int(width or 1), projection=spec.endswith("b"))
        return net, (torch.randn(1, 3, 32, 32),)
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, model)(weights=None).eval(), (torch.randn(1, 3, 224, 224),)


def _tp(m, x) -> dict:
    import torch
    import torch_pruning as tp

    t = time.perf_counter()
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=TP_RATIO, ignored_layers=last)
    build = time.perf_counter() - t
    pruner.step()
    with torch.no_grad():
        m(*x)  # the pruned module must still run
    return {"build_s": build, "flops_kept": None}


def _ours(tool: str, m, x) -> dict:
    import numpy as np

    import idapgraph

    spent = common.stage_clock()
    kw = dict(method="magnitude", heal="none")
    if tool == "ours-lsq":
        shape = (CALIB, *x[0].shape[1:])
        kw = dict(calib=np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    r = idapgraph.compress(m, x, flops=FLOPS, **kw)
    heal = spent.get("heal.run", [0.0])[0]
    return {"build_s": spent["prepare (analyze)"][0], "heal_s": heal,
            "nodes": spent["nodes"][0], "flops_kept": r.report.flops_ratio}


def _warm(tool: str) -> None:
    """The tool's first call, on a two-conv net, untimed: its imports (and the lazy ones of
    torch it triggers: ``import torch_pruning`` loads sympy, idapgraph's first fx shape
    propagation does) and one-time initialisation are not what the table compares."""
    import torch

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 4)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    if tool == "tp":
        _tp(tiny, x)
        return
    import idapgraph

    if tool == "ours-onnx":
        from helpers import export_onnx

        tiny, x = export_onnx(tiny, x), None
    idapgraph.compress(tiny, x, flops=FLOPS, method="magnitude", heal="none")


def child(tool: str, model: str) -> dict:
    """Measure one (tool, model) in this process."""
    common.setup(THREADS)
    m, x = _build(model)
    if x is not None:  # warm: a forward pass, the tool's imports (a library's first call
        import torch       # would otherwise be timed, not its work)

        with torch.no_grad():
            m(*x)
    _warm(tool)
    if tool == "ours-onnx" and x is not None:
        from helpers import export_onnx

        m, x = export_onnx(m, x), None
    before = _rss_mib("VmRSS")
    t = time.perf_counter()
    out = {"tool": tool, "model": model, **(_tp(m, x) if tool == "tp" else _ours(tool, m, x))}
    out.update(wall_s=time.perf_counter() - t, rss_before_mib=before,
               peak_mib=_rss_mib("VmHWM"))
    out["extra_mib"] = out["peak_mib"] - before
    return out


def measure(tool: str, model: str, timeout: int = 900) -> dict:
    """Run :func:`child` in a fresh process; failures come back as ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "tools.bench.cost", "--child", tool, model]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    try:
        p = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"error": (lines[-1] if lines else f"exit {p.returncode}")[:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


REPEATS = 3  # children per sub-second cell: the one with the median wall time is reported


def median_of(tool: str, model: str, n: int = REPEATS) -> dict:
    """:func:`measure` ``n`` times; the run with the median wall time (a failure if any failed)."""
    runs = [measure(tool, model) for _ in range(n)]
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def _ratio(a: dict, b: dict | None, key: str) -> str | None:
    if b is None or "error" in a or "error" in b or not b.get(key):
        return None
    return f"{a[key] / b[key]:.2f}"


def _peers(models) -> Table:
    t = Table("model", "tool", "build s", "total s", "peak RSS MiB", "extra MiB over start",
              "FLOPs kept", "time ratio ours/TP", "extra-memory ratio ours/TP")
    for model in models:
        res = {tool: median_of(tool, model) for tool in ("ours-fx", "ours-onnx", "tp")}
        for tool, r in res.items():
            if "error" in r:
                t.add(model, tool, f"failed: {r['error']}", *[None] * 6)
                continue
            tp = None if tool == "tp" else res["tp"]
            t.add(model, tool, f"{r['build_s']:.2f}", f"{r['wall_s']:.2f}", f"{r['peak_mib']:.0f}",
                  f"{r['extra_mib']:.0f}", r["flops_kept"], _ratio(r, tp, "wall_s"),
                  _ratio(r, tp, "extra_mib"))
    return t


def _growth(label: str, models: list[tuple[str, str]]) -> Table:
    """One row per model: the defaults (time, healing time), magnitude, Torch-Pruning, and the
    ratios to the previous row."""
    t = Table(label, "nodes", "defaults s", "healing s", "magnitude s", "TP s",
              "magnitude / TP", "defaults × previous", "healing × previous")
    prev = None
    for name, model in models:
        lsq, mag, tp = measure("ours-lsq", model), median_of("ours-fx", model), median_of("tp", model)
        cell = {k: (f"failed: {r['error']}" if "error" in r else f"{r['wall_s']:.2f}")
                for k, r in (("lsq", lsq), ("mag", mag), ("tp", tp))}
        ok = "error" not in lsq
        t.add(name, lsq.get("nodes"), cell["lsq"], f"{lsq['heal_s']:.2f}" if ok else None,
              cell["mag"], cell["tp"], _ratio(mag, tp, "wall_s"),
              _ratio(lsq, prev, "wall_s"), _ratio(lsq, prev, "heal_s") if prev else None)
        prev = lsq if ok else None
    return t


def _sizes(sizes) -> Table:
    t = Table("nodes", "analysis s", "compress s", "peak RSS MiB", "extra MiB over start",
              "FLOPs kept", "time ratio to previous size")
    prev = None
    for n in sizes:
        r = measure("ours-onnx", f"scale:{n}")
        if "error" in r:
            t.add(n, f"failed: {r['error']}", *[None] * 5)
            prev = None
            continue
        t.add(r["nodes"], f"{r['build_s']:.2f}", f"{r['wall_s']:.2f}", f"{r['peak_mib']:.0f}",
              f"{r['extra_mib']:.0f}", r["flops_kept"], _ratio(r, prev, "wall_s"))
        prev = r
    return t


def run(quick: bool, out: Path) -> Section:
    t0 = time.time()
    depths = DEPTHS[:2] if quick else DEPTHS
    widths = WIDTHS[:2] if quick else WIDTHS
    s = Section("Compiler cost: idapgraph vs Torch-Pruning, and growth with depth, width and "
                "graph size")
    s.blocks += [
        f"One child process per cell (`python3 -m tools.bench.cost --child TOOL MODEL`), "
        f"{THREADS} threads. ours-fx / ours-onnx: one `idapgraph.compress(flops={FLOPS}, "
        "method='magnitude', heal='none')` call on the torch module / its TorchScript export "
        "(analysis, selection, emit and validation of the result: onnxruntime run or module "
        "forward); build s = its analysis. tp: Torch-Pruning `MetaPruner` (magnitude, "
        f"pruning_ratio={TP_RATIO}, last Linear ignored; build s = its DependencyGraph "
        "construction), `step()` and one forward pass of the pruned module. Peak RSS is the "
        "child's `VmHWM`; 'extra' subtracts the RSS after the model was built. Random "
        "weights, 224×224.", _peers(MODELS[:2] if quick else MODELS).markdown(),
        f"Sub-second cells (ours-fx, ours-onnx, tp) are the median of {REPEATS} children. "
        f"Depth: CIFAR ResNet-D (`tools/cifar_resnet.py`, random weights, 32×32, 1×1-conv "
        "projection shortcuts where the shape changes: Torch-Pruning fails on the "
        "zero-padding shortcuts of the pretrained nets). defaults = "
        f"one fx `compress(flops={FLOPS})` with idap scores and least-squares healing on "
        f"{CALIB} random calibration images; healing s = its healing stage; magnitude = "
        "ours-fx above; TP as above.",
        _growth("depth", [(f"ResNet-{d}", f"cifar:{d}b") for d in depths]).markdown(),
        "Width: CIFAR ResNet-56 with every stage's channels multiplied by W (16W/32W/64W), "
        "the same columns.",
        _growth("width", [(f"ResNet-56 ×{w}", f"cifar:56x{w}b") for w in widths]).markdown(),
        "Synthetic ONNX graphs (`tests/scale_models.py`: residual conv, split/concat and "
        "1x1-conv MLP blocks, 8 channels at 4×4), ours-onnx as above:",
        _sizes(SIZES[:2] if quick else SIZES).markdown()]
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])))
    else:
        raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
