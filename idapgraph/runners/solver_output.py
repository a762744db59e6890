"""Quiet solving: HiGHS (SciPy's ``milp``) prints a debug line to the process's standard output
even with ``disp=False``; :func:`filtered` drops it around a solve, in the orchestration that
calls the solver (the selection pass itself touches no file descriptor)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile

# HiGHS (SciPy's milp) prints this debug line to the process's stdout even with disp=False
_SOLVER_NOISE = (b"HighsMipSolverData::",)


@contextlib.contextmanager
def filtered():
    """While the block runs, what native code writes to file descriptor 1 is captured; after it,
    the capture is written back without the solver's debug lines (:data:`_SOLVER_NOISE`)."""
    try:
        libc, saved = ctypes.CDLL(None), os.dup(1)
    except (OSError, TypeError):  # no C library to flush, or no stdout: leave it alone
        libc = None
    if libc is None:
        yield
        return
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 1)
            try:
                yield
            finally:
                libc.fflush(None)
                os.dup2(saved, 1)
                tmp.seek(0)
                kept = [line for line in tmp.read().splitlines(keepends=True)
                        if not line.startswith(_SOLVER_NOISE)]
                out = memoryview(b"".join(kept))
                while out:
                    out = out[os.write(1, out):]
    finally:
        os.close(saved)
