"""onnxruntime CPU latency: a fixed thread count, warm-up runs, the median of timed runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import onnx


@dataclass
class Latency:
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _times(models: list[onnx.ModelProto], feeds_list, runs: int, warmup: int,
           threads: int) -> list[list[float]]:
    """Milliseconds of every run of each model, the models timed in turns (one run of each,
    ``runs`` times) after ``warmup`` runs each."""
    from ..emit.validate import example_feeds, session

    feeds_list = feeds_list or [example_feeds(m) for m in models]
    sessions = [session(m, threads=threads) for m in models]
    for s, f in zip(sessions, feeds_list):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, feeds_list)):
            t = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - t) * 1e3)
    return times


def latency(model: onnx.ModelProto, feeds=None, *, runs: int = 20, warmup: int = 5,
            threads: int = 1) -> Latency:
    """Time ``model`` on ``feeds`` (default: seeded random inputs, batch 1) in onnxruntime's CPU
    provider with ``threads`` intra-op threads and full graph optimisation."""
    times = _times([model], None if feeds is None else [feeds], runs, warmup, threads)[0]
    return Latency(statistics.median(times), min(times), max(times), runs, warmup, threads)


def paired(models: list[onnx.ModelProto], feeds_list=None, *, runs: int = 20, warmup: int = 5,
           threads: int = 1) -> list[float]:
    """Median milliseconds of each model, timed in turns (one run of each, ``runs`` times), so
    a change in machine load while they are timed hits all of them alike."""
    return [statistics.median(t) for t in _times(models, feeds_list, runs, warmup, threads)]
