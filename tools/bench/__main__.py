"""Driver: run the benchmarks, write their markdown and plots to ``--out``, print the markdown.

    python3 -m tools.bench [--quick] [--only mnist,efficientnet,minilm,cost,defaults,cifar,sst2,llm] [--out bench_out]
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from pathlib import Path

from . import common

BENCHMARKS = ("mnist", "efficientnet", "minilm", "cost", "defaults", "cifar", "sst2", "llm")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer targets and rows per section")
    ap.add_argument("--only", default=",".join(BENCHMARKS))
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    head = ["# Benchmark run", "",
            f"Command: `python3 -m tools.bench {shlex.join(argv if argv is not None else sys.argv[1:])}`"
            " (from the repository root).", "", common.machine(),
            "GPU latency: not measured (no GPU on this machine); every latency is onnxruntime "
            "CPU, 1 intra-op thread, 5 warm-up runs, median of >= 20 timed runs, batch 1.", ""]
    print("\n".join(head), flush=True)
    parts = []
    for name in a.only.split(","):
        mod = importlib.import_module(f"tools.bench.{name}")
        sec = mod.run(a.quick, a.out)
        md = sec.markdown(a.out)
        (a.out / f"{name}.md").write_text(md)
        parts.append(md)
        print(md, flush=True)
    tail = f"(total wall time {time.time() - t0:.0f} s)"
    (a.out / "BENCHMARKS.md").write_text("\n".join(head) + "\n" + "\n".join(parts) + "\n" + tail + "\n")
    print(tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
