"""Dense products for the least-squares normal equations, by torch's BLAS: on the machines
measured (BENCHMARKS.md, compile cost) it runs ``xᵀx`` for calibration-sized ``x`` several times
faster than numpy's bundled OpenBLAS."""

from __future__ import annotations

import numpy as np


def tmatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``aᵀ b`` of two 2-D float32 arrays with the same rows (no copy of either)."""
    import torch

    ta, tb = (torch.from_numpy(v if v.flags.writeable else v.copy()) for v in (a, b))
    return (ta.T @ tb).numpy()
