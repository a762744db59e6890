"""Compiler cost: wall time and peak memory of idapgraph (analyze + compress, ``--method
magnitude --heal none``, so it measures the compiler, not calibration) against Torch-Pruning
(``MetaPruner``: its DependencyGraph build, then one pruning step) on the same torchvision models
(random weights), and idapgraph's growth on synthetic ONNX graphs of 1k → 10k → 50k nodes.

    python3 -m tools.bench.cost [--quick]
    python3 -m tools.bench.cost --child TOOL MODEL     # one measurement, JSON on stdout

Every measurement runs in its own child process: it builds the model (and, for ``ours-onnx``,
its TorchScript export), records its RSS, then runs the measured step and reports the step's
wall time, the peak RSS (``VmHWM``) and the peak's excess over the RSS before the step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from . import common
from .common import Section, Table

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
TOOLS = ("ours-fx", "ours-onnx", "tp")
FLOPS = 0.5      # idapgraph's target
TP_RATIO = 0.3   # Torch-Pruning's channel ratio (about half the FLOPs on these CNNs)


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
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, model)(weights=None).eval(), (torch.randn(1, 3, 224, 224),)


def child(tool: str, model: str) -> dict:
    """Measure one (tool, model) in this process."""
    import copy

    import torch

    common.setup(1)
    m, x = _build(model)
    if tool == "ours-onnx" and x is not None:
        from helpers import export_onnx

        m, x = export_onnx(m, x), None
    out = {"tool": tool, "model": model}
    before = _rss_mib("VmRSS")
    t = time.perf_counter()
    if tool == "tp":
        import torch_pruning as tp

        last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=TP_RATIO, ignored_layers=last)
        out["build_s"] = time.perf_counter() - t
        pruner.step()
        with torch.no_grad():
            m(*x)  # the pruned module must still run
        kept = None
    else:
        import idapgraph

        a = idapgraph.analyze(copy.deepcopy(m) if x is not None else m, x)
        out["build_s"] = time.perf_counter() - t
        out["nodes"] = len(a.graph.nodes) if hasattr(a.graph, "nodes") else None
        r = idapgraph.compress(m, x, flops=FLOPS, method="magnitude", heal="none")
        kept = r.report.flops_ratio
    out.update(wall_s=time.perf_counter() - t, rss_before_mib=before,
               peak_mib=_rss_mib("VmHWM"), flops_kept=kept)
    out["extra_mib"] = out["peak_mib"] - before
    return out


def measure(tool: str, model: str, timeout: int = 900) -> dict:
    """Run :func:`child` in a fresh process; failures come back as ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "tools.bench.cost", "--child", tool, model]
    try:
        p = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"error": (lines[-1] if lines else f"exit {p.returncode}")[:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _ratio(a: dict, b: dict, key: str) -> str | None:
    if "error" in a or "error" in b or not b.get(key):
        return None
    return f"{a[key] / b[key]:.2f}"


def run(quick: bool, out: Path) -> Section:
    t0 = time.time()
    models = MODELS[:2] if quick else MODELS
    t = Table("model", "tool", "build s", "total s", "peak RSS MiB", "extra MiB over start",
              "FLOPs kept", "time ratio ours/TP", "extra-memory ratio ours/TP")
    for model in models:
        res = {tool: measure(tool, model) for tool in TOOLS}
        for tool in TOOLS:
            r = res[tool]
            if "error" in r:
                t.add(model, tool, f"failed: {r['error']}", None, None, None, None, None, None)
                continue
            tr = None if tool == "tp" else _ratio(r, res["tp"], "wall_s")
            mr = None if tool == "tp" else _ratio(r, res["tp"], "extra_mib")
            t.add(model, tool, f"{r['build_s']:.2f}", f"{r['wall_s']:.2f}", f"{r['peak_mib']:.0f}",
                  f"{r['extra_mib']:.0f}", r["flops_kept"], tr, mr)
    scale = Table("nodes", "analyze s", "analyze + compress s", "peak RSS MiB",
                  "extra MiB over start", "FLOPs kept", "time ratio to previous size")
    prev = None
    for n in (1000, 10000) if quick else (1000, 10000, 50000):
        r = measure("ours-onnx", f"scale:{n}")
        if "error" in r:
            scale.add(n, f"failed: {r['error']}", None, None, None, None, None)
            continue
        scale.add(r.get("nodes") or n, f"{r['build_s']:.2f}", f"{r['wall_s']:.2f}",
                  f"{r['peak_mib']:.0f}", f"{r['extra_mib']:.0f}", r["flops_kept"],
                  None if prev is None else f"{r['wall_s'] / prev:.2f}")
        prev = r["wall_s"]
    s = Section("Compiler cost: idapgraph vs Torch-Pruning, and growth with graph size")
    s.blocks += [
        "One child process per cell (`python3 -m tools.bench.cost --child TOOL MODEL`), 1 "
        "thread. ours-fx / ours-onnx: `idapgraph.analyze` then `idapgraph.compress(flops="
        f"{FLOPS}, method='magnitude', heal='none')` on the torch module / its TorchScript "
        "export (compress re-analyses, emits and validates the result in onnxruntime or by "
        "running the module); build s = the analyze call. tp: Torch-Pruning `MetaPruner` "
        f"(magnitude, pruning_ratio={TP_RATIO}, last Linear ignored; build s = its "
        "DependencyGraph construction) then `step()` and one forward pass. Peak RSS is the "
        "child's `VmHWM`; 'extra' subtracts the RSS after the model was built. Random weights, "
        "224×224.", t.markdown(),
        "Synthetic ONNX graphs (`tests/scale_models.py`: residual conv, split/concat and "
        "1x1-conv MLP blocks, 8 channels at 4×4), ours-onnx as above (flops 0.5):",
        scale.markdown()]
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:])))
    else:
        raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
