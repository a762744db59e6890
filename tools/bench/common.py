"""Shared pieces of the benchmarks: set-up, FLOPs counting, latency, markdown tables, plots."""

from __future__ import annotations

import copy
import datetime
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (str(ROOT), str(ROOT / "tests"), str(ROOT / "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

SEED = 0
LATENCY_RUNS, LATENCY_WARMUP, LATENCY_THREADS = 20, 5, 1


def setup(threads: int = 1) -> None:
    """Quiet warnings, ``threads`` torch threads, fixed seed."""
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)


@dataclass
class Section:
    """One benchmark's output: a title, markdown blocks (tables, notes) and plot files."""

    title: str
    blocks: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self, root: Path | None = None) -> str:
        out = [f"## {self.title}", ""]
        for b in self.blocks:
            out += [b, ""]
        for p in self.plots:
            rel = os.path.relpath(p, root) if root else p.name
            out += [f"![{p.stem}]({rel})", ""]
        out.append(f"(section wall time {self.seconds:.0f} s)")
        return "\n".join(out) + "\n"


class Table:
    """A markdown table built row by row."""

    def __init__(self, *headers: str) -> None:
        self.headers = list(headers)
        self.rows: list[list[str]] = []

    def add(self, *cells) -> None:
        self.rows.append([fmt(c) for c in cells])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |",
                 "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def flops(model, example=None) -> int:
    """idapgraph's FLOPs count (1 MAC = 1 FLOP) of a torch module (with ``example``) or ONNX."""
    import idapgraph

    if example is not None:
        model = copy.deepcopy(model)
    return idapgraph.analyze(model, example).cost.flops


def params(model, example=None) -> int:
    import idapgraph

    if example is not None:
        model = copy.deepcopy(model)
    return idapgraph.analyze(model, example).cost.params


def latency_ms(proto, runs: int = LATENCY_RUNS) -> float:
    """onnxruntime CPU median latency (ms): 1 intra-op thread, 5 warm-up runs, median of
    ``runs`` (at least 20)."""
    import idapgraph

    return idapgraph.latency(proto, runs=max(runs, LATENCY_RUNS), warmup=LATENCY_WARMUP,
                             threads=LATENCY_THREADS)["median_ms"]


@dataclass
class Speed:
    """Latency of a compressed ONNX model against its original's."""

    base_ms: float
    ms: float | None
    flops_kept: float

    @property
    def speedup(self) -> float | None:
        return None if self.ms is None else self.base_ms / self.ms

    @property
    def efficiency(self) -> float | None:
        """speedup × FLOPs kept: 1.0 when latency falls exactly as FLOPs do."""
        s = self.speedup
        return None if s is None else s * self.flops_kept

    def cells(self) -> list:
        return [None if self.ms is None else f"{self.ms:.3f} ({self.base_ms:.3f})",
                self.speedup, self.efficiency]


SPEED_HEADERS = ("latency ms (original)", "speedup", "efficiency")


def speed(base, proto, flops_kept: float, runs: int = LATENCY_RUNS) -> Speed:
    """Latency of ``proto`` and, right before it, of the original ``base``: paired, since the
    load of a shared machine drifts between rows."""
    return Speed(latency_ms(base, runs), latency_ms(proto, runs), flops_kept)


def timed(fn, *a, **kw):
    """(result, seconds)."""
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def stage_clock() -> dict[str, list[float]]:
    """Wrap every stage of ``idapgraph.compress`` (and its preparation) so that each records its
    wall and CPU seconds, summed over calls: stage name -> [wall, CPU]. ``prepare (analyze)``
    also leaves the analysed graph's node count under ``"nodes"`` (as [count, 0])."""
    from idapgraph import stages

    spent: dict[str, list[float]] = {}

    def wrap(name, fn, seen=None):
        def run(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                out = fn(*a, **k)
            finally:
                got = spent.setdefault(name, [0.0, 0.0])
                got[0] += time.perf_counter() - w
                got[1] += time.process_time() - c
            if seen:
                seen(out)
            return out
        return run

    def nodes(state):
        spent["nodes"] = [len(state.a.graph.nodes), 0]

    stages.prepare = wrap("prepare (analyze)", stages.prepare, nodes)
    stages.STAGES = tuple(wrap(f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}", fn)
                          for fn in stages.STAGES)
    stages.report.run = wrap("report", stages.report.run)
    return spent


def plot(path: Path, title: str, ylabel: str, series: dict[str, list[tuple[float, float]]],
         original: float | None = None, xlabel: str = "FLOPs kept",
         xlim: tuple[float, float] | None = (1.02, 0.25)) -> Path:
    """One line per method: metric against FLOPs kept (or ``xlabel``; ``xlim`` None: matplotlib
    chooses). A small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=90)
    colors = plt.get_cmap("tab20").colors
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if p[1] is not None)
        if not pts:
            continue
        ft = "FT" in name
        style, marker = (("--", "s") if name.startswith(("TP", "Torch-Pruning")) else
                         ("--", "^") if name.startswith("onnxsim") else
                         (":", "D") if name.startswith("layer") else ("-", "o"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style if not ft else "-.",
                marker="*" if ft else marker, ms=4, lw=1.2, color=colors[(2 * i) % 20 + (i // 10) % 2],
                label=name)
    if original is not None:
        ax.axhline(original, color="grey", lw=0.8, ls=":", label="original")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if xlim is not None:
        ax.set_xlim(*xlim)  # FLOPs kept falls to the right
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def targets(default: tuple[float, ...]) -> tuple[float, ...]:
    """The FLOPs targets of a section: ``IDAPGRAPH_BENCH_TARGETS`` (comma list) or ``default``."""
    got = os.environ.get("IDAPGRAPH_BENCH_TARGETS")
    return tuple(float(t) for t in got.split(",")) if got else default


def standalone(run, description: str, argv: list[str] | None = None) -> int:
    """``python3 -m tools.bench.NAME [--quick] [--out DIR]``: one benchmark, markdown printed."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    a = ap.parse_args(argv)
    print(run(a.quick, a.out).markdown())
    return 0


def machine() -> str:
    """CPU model, cores, load, date and the versions that matter, as one markdown paragraph."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    vers = []
    for dist in ("torch", "torchvision", "torch-pruning", "onnxsim", "onnx", "onnxruntime",
                 "transformers", "idapgraph"):
        try:
            vers.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            vers.append(f"{dist} (missing)")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"{datetime.date.today().isoformat()}; load average at start {load} (1/5/15 min); "
            + ", ".join(vers) + ".")
