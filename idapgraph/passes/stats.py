"""Per-channel statistics of activations, accumulated batch by batch (a runner's reducer)."""

from __future__ import annotations

import numpy as np


class ChannelStats:
    """Per requested (tensor, axis): sum, sum of squares and count of every channel's entries,
    and the number of samples (first axis) seen."""

    def __init__(self, requests: set[tuple[str, int]]) -> None:
        self.requests = requests
        self.s1: dict[tuple[str, int], np.ndarray] = {}
        self.s2: dict[tuple[str, int], np.ndarray] = {}
        self.n: dict[tuple[str, int], int] = {}
        self.samples: dict[tuple[str, int], int] = {}

    @property
    def tensors(self) -> list[str]:
        return sorted({t for t, _ in self.requests})

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        for t, ax in self.requests:
            v = values.get(t)
            if v is None:
                continue
            v = np.asarray(v)
            if v.size == 0:  # a data-dependent size that came out empty (no detections)
                continue
            v = v if v.dtype in (np.float32, np.float64) else v.astype(np.float32)
            batch = v.shape[0] if v.ndim > 1 else 1
            a = ax % v.ndim  # the channel axis in the middle: (before, channels, after)
            v = v.reshape(int(np.prod(v.shape[:a], dtype=np.int64)), v.shape[a], -1)
            key = (t, ax)
            # each row's sums in v's precision (pairwise summation along the contiguous axis,
            # squares without a temporary), the rows' in float64
            s1 = v.sum(axis=2).sum(axis=0, dtype=np.float64)
            s2 = np.einsum("ijk,ijk->ij", v, v).sum(axis=0, dtype=np.float64)
            self.s1[key] = self.s1.get(key, 0) + s1
            self.s2[key] = self.s2.get(key, 0) + s2
            self.n[key] = self.n.get(key, 0) + v.shape[0] * v.shape[2]
            self.samples[key] = self.samples.get(key, 0) + batch

    def mean_std(self, t: str, ax: int) -> tuple[np.ndarray, np.ndarray] | None:
        key = (t, ax)
        if not self.n.get(key):
            return None
        m = self.s1[key] / self.n[key]
        return m, np.sqrt(np.maximum(self.s2[key] / self.n[key] - m * m, 0.0))

    def rms_norm(self, t: str, ax: int) -> np.ndarray | None:
        """Each channel's L2 norm over all data divided by sqrt(samples): the per-sample RMS
        norm, independent of how the data was batched."""
        key = (t, ax)
        return np.sqrt(self.s2[key] / self.samples[key]) if self.samples.get(key) else None
