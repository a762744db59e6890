"""Where latencies come from: a clock times a layer (an entry of the look-up tables) and whole
models (the unpruned one alone, a candidate in turns with it).

:class:`OrtClock`, the default, times with onnxruntime on this machine. Any object with the same
four methods can stand in for it within ``with using(clock):`` -- a cost model whose figures do
not depend on the load of the machine (the tests' ``CostClock``), or a clock that times on
another device. Everything ``latency=R`` measures goes through :func:`current`."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Protocol

from .providers import CPU


class Clock(Protocol):
    def machine(self, threads: int, provider: str) -> dict:
        """What the timings depend on besides the layer: the key of a latency table."""

    def layer(self, sig: dict, cin: int, cout: int, *, threads: int, provider: str) -> float:
        """Milliseconds of one call of the layer ``sig`` with ``cin`` -> ``cout`` channels."""

    def model(self, model, *, threads: int, provider: str, runs: int = 20) -> float:
        """Milliseconds of one call of the ONNX ``model``."""

    def pair(self, reference, candidate, *, threads: int, provider: str,
             runs: int = 20) -> tuple[float, float]:
        """(reference ms, candidate ms), the two timed in turns."""


# the closed loop's timing of a candidate against the original lasts at least this long, so a
# small model gets more than ``runs`` runs (on a 2-core EPYC VM, MobileNetV2's final 20-run
# ratio read 0.392 where three passes of 30 runs each read 0.329)
RATIO_MIN_S = 1.5


class OrtClock:
    """onnxruntime on this machine: layers by :func:`~idapgraph.runners.op_timer.time_op`,
    models by :mod:`~idapgraph.runners.bench` (pinned threads, median of timed runs)."""

    def machine(self, threads: int, provider: str = CPU) -> dict:
        from . import op_timer

        return op_timer.machine(threads, provider)

    def layer(self, sig: dict, cin: int, cout: int, *, threads: int, provider: str) -> float:
        from . import op_timer

        return op_timer.time_op(sig, cin, cout, threads=threads, provider=provider)

    def model(self, model, *, threads: int, provider: str, runs: int = 20) -> float:
        from .bench import latency

        return latency(model, runs=runs, warmup=5, threads=threads, provider=provider).median_ms

    def pair(self, reference, candidate, *, threads: int, provider: str,
             runs: int = 20) -> tuple[float, float]:
        from .bench import paired

        ref, cand = paired([reference, candidate], runs=runs, threads=threads,
                           provider=provider, min_s=RATIO_MIN_S)
        return ref, cand


_CURRENT: contextvars.ContextVar[Clock] = contextvars.ContextVar("idapgraph_clock",
                                                                 default=OrtClock())


def current() -> Clock:
    """The clock in use (:class:`OrtClock` unless :func:`using` set another)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """Time with ``clock`` inside the ``with`` block (this thread or task only)."""
    token = _CURRENT.set(clock)
    try:
        yield clock
    finally:
        _CURRENT.reset(token)
