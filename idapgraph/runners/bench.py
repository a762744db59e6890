"""onnxruntime latency: a fixed thread count, warm-up runs, the median of timed runs; on the CPU
by default, on a device provider (CUDA) with inputs and outputs kept on the device
(:func:`idapgraph.runners.providers.bound_call`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import onnx

from .affinity import pinned
from .providers import CPU, bound_call


@dataclass
class Latency:
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    threads: int
    provider: str = CPU

    def to_dict(self) -> dict:
        return asdict(self)


def _times(models: list[onnx.ModelProto], feeds_list, runs: int, warmup: int,
           threads: int, block: int = 1, settle: int = 0,
           provider: str = CPU, min_s: float = 0.0) -> list[list[float]]:
    """Milliseconds of ``runs`` runs of each model (more while the turns have taken less than
    ``min_s`` seconds), after ``warmup`` runs each: the models timed in turns of ``block``
    consecutive runs, the first ``settle`` runs of every turn not counted; on ``threads`` fixed
    CPUs (:func:`~idapgraph.runners.affinity.pinned`)."""
    from ..emit.validate import example_feeds, session

    if not 0 <= settle < block:
        raise ValueError(f"need 0 <= settle < block, got settle={settle}, block={block}")
    feeds_list = feeds_list or [example_feeds(m) for m in models]
    times: list[list[float]] = [[] for _ in models]
    with pinned(threads):
        calls = [bound_call(session(m, threads=threads, provider=provider), f, provider)
                 for m, f in zip(models, feeds_list)]
        for call in calls:
            for _ in range(warmup):
                call()
        t0 = time.perf_counter()
        while len(times[0]) < runs or time.perf_counter() - t0 < min_s:
            for i, call in enumerate(calls):
                for j in range(block):
                    t = time.perf_counter()
                    call()
                    if j >= settle:
                        times[i].append((time.perf_counter() - t) * 1e3)
    cut = runs if min_s <= 0 else min(len(t) for t in times)  # every model as many runs
    return [t[:cut] for t in times]


def latency(model: onnx.ModelProto, feeds=None, *, runs: int = 20, warmup: int = 5,
            threads: int = 1, provider: str = CPU) -> Latency:
    """Time ``model`` on ``feeds`` (default: seeded random inputs, batch 1) in onnxruntime
    (``provider``, default the CPU) with ``threads`` intra-op threads and full graph
    optimisation."""
    times = _times([model], None if feeds is None else [feeds], runs, warmup, threads,
                   provider=provider)[0]
    return Latency(statistics.median(times), min(times), max(times), runs, warmup, threads,
                   provider)


def paired(models: list[onnx.ModelProto], feeds_list=None, *, runs: int = 20, warmup: int = 5,
           threads: int = 1, block: int = 10, settle: int = 2,
           provider: str = CPU, min_s: float = 0.0) -> list[float]:
    """Median milliseconds of each model over ``runs`` runs, the models timed in turns (so a
    change in machine load while they are timed hits all of them alike) of ``block``
    consecutive runs whose first ``settle`` are not counted: right after another model ran, a
    model's weights are out of cache. Turns of one run each put EfficientNet-B0 pruned to 0.26
    of its latency at 0.287 (2.63 ms against 2.27 ms timed alone), turns of 10 settled by 2 at
    0.262-0.267, timed alone 0.257-0.259. ``min_s``: keep taking turns until they have lasted
    that long (small models: more runs, less jitter in the median)."""
    return [statistics.median(t) for t in _times(models, feeds_list, runs, warmup, threads,
                                                 block, settle, provider, min_s)]
