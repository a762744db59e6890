"""Analysis time against graph size: the passes ``idapgraph.analyze`` runs plus block finding.

    python tools/bench_scale.py [--nodes 2500 10000] [--profile N]

For each size, builds the synthetic graph of ``tests/scale_models.py`` (residual conv blocks,
split/concat blocks, 1x1-conv MLP blocks) and times, in this process: loading (normalise, shape
inference, IR), coupling, cost, and ``passes.blocks.find`` (dominators). Prints wall and CPU
seconds per stage and the ratio between consecutive sizes. ``--profile N`` prints the cProfile
top functions for the graph of N nodes instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def analyse(model) -> dict[str, float]:
    """Seconds (CPU) per stage of analysing ``model``; "total" also in wall seconds."""
    from idapgraph import analysis
    from idapgraph.passes import blocks, cost, coupling

    times: dict[str, float] = {}
    w0, c0 = time.perf_counter(), time.process_time()
    with analysis.gc_paused():  # as ``analyze`` runs them
        m = analysis.load(model)
        times["load"] = time.process_time() - c0
        for name, fn in (("coupling", coupling.analyze), ("cost", cost.count),
                         ("blocks", blocks.find)):
            c = time.process_time()
            fn(m.graph)
            times[name] = time.process_time() - c
    times["total_cpu"] = time.process_time() - c0
    times["total_wall"] = time.perf_counter() - w0
    return times


def lines_executed(fn, *args) -> int:
    """Python lines executed by ``fn(*args)`` (``sys.settrace`` line events, in any module): a
    cost counter that, unlike a clock, reads the same on a loaded machine. Native code
    (onnx's shape inference, numpy) is one line per call."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg: local)
    try:
        fn(*args)
    finally:
        sys.settrace(previous)
    return count


def main(argv: list[str] | None = None) -> int:
    import scale_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[2500, 10000])
    ap.add_argument("--profile", type=int, default=None)
    a = ap.parse_args(argv)
    if a.profile:
        model = scale_models.build(a.profile)
        pr = cProfile.Profile()
        pr.enable()
        analyse(model)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return 0
    print("| nodes | load | coupling | cost | blocks | total CPU s | total wall s | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|")
    prev = None
    for n in a.nodes:
        model = scale_models.build(n)
        t = analyse(model)
        ratio = "" if prev is None else f"{t['total_cpu'] / prev:.2f}"
        prev = t["total_cpu"]
        print(f"| {len(model.graph.node)} | {t['load']:.2f} | {t['coupling']:.2f} | "
              f"{t['cost']:.2f} | {t['blocks']:.2f} | {t['total_cpu']:.2f} | "
              f"{t['total_wall']:.2f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
