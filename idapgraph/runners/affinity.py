"""Timing on fixed CPUs: ``with pinned(threads):`` keeps the calling thread -- and the
onnxruntime thread pools of sessions created inside -- on the last ``threads`` CPUs it may use.

Left to the scheduler, a one-thread timing loop moves between CPUs, and on a 2-core VM the
moves do not cost every model alike: the MNIST CNN pruned to about half its latency, timed in
turns with the original (``runners.bench.paired``, 1.5 s each), read 0.58-0.60 of it in one
minute and 0.43 in the next; pinned to either CPU, 0.471-0.479 over eight timings.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def pinned(threads: int):
    """The block runs on the last ``threads`` CPUs of the calling thread's affinity mask, which
    is restored afterwards. No change where the platform cannot set affinities (not Linux) or
    setting one fails (``OSError``), for ``threads <= 0`` (onnxruntime's default: every core),
    or where the mask has no more CPUs than ``threads``."""
    get = getattr(os, "sched_getaffinity", None)
    allowed = sorted(get(0)) if get is not None and threads > 0 else []
    try:
        if threads > 0 and len(allowed) > threads:
            os.sched_setaffinity(0, allowed[-threads:])  # pid 0: on Linux, the calling thread
        else:
            allowed = []
    except OSError:  # a sandbox that forbids it: time unpinned
        allowed = []
    try:
        yield
    finally:
        if allowed:
            os.sched_setaffinity(0, allowed)
