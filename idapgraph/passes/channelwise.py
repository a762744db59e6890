"""Least-squares refit of a depthwise convolution, one channel at a time.

Output channel ``c`` of a depthwise conv reads only input channel ``c``, so its refit is a
small regression of its own: ``[w_c, b_c] = argmin ‖[P_c, 1][w_c, b_c]ᵀ − y_c‖² + λ_c‖w_c −
w0_c‖²`` over the ``kh·kw`` patch ``P_c`` of that channel (the dense fit of
:mod:`idapgraph.passes.reconstruct` would hold a ``(C·kh·kw)²`` matrix, nearly all zero). Each
channel's ridge is chosen on the held-out fold as the dense fit's is, and a channel whose best
held-out residual is not below its current weights' keeps them. Pure numpy; the sums are
gathered by :class:`reconstruct.Normal` like the dense ones.
"""

from __future__ import annotations

import numpy as np


class ChannelSums:
    """Per-channel normal-equation sums over some rows: ``[P_c,1]ᵀ[P_c,1]`` (C, k+1, k+1),
    ``[P_c,1]ᵀy_c`` (C, k+1) and ``Σy_c²`` (C,), float64."""

    def __init__(self, channels: int, k: int) -> None:
        self.gram = np.zeros((channels, k + 1, k + 1))
        self.cross, self.yy_c = np.zeros((channels, k + 1)), np.zeros(channels)

    def add(self, x: np.ndarray, y: np.ndarray, tmatmul=None) -> None:
        """One batch: ``x`` im2col rows (rows, C·k) in channel-major column order, ``y`` the
        target rows (rows, C); the products in float32, summed in float64."""
        if not x.shape[0]:
            return
        c = y.shape[1]
        xa = np.concatenate([x.reshape(x.shape[0], c, -1),
                             np.ones((x.shape[0], c, 1), dtype=x.dtype)], axis=2)
        per = xa.transpose(1, 2, 0)  # (C, k+1, rows)
        self.gram += np.matmul(per, per.transpose(0, 2, 1))
        self.cross += np.matmul(per, y.T[:, :, None])[:, :, 0]
        self.yy_c += np.square(y, dtype=np.float64).sum(axis=0)

    def __add__(self, other: ChannelSums) -> ChannelSums:
        s = ChannelSums(0, 0)
        s.gram, s.cross, s.yy_c = self.gram + other.gram, self.cross + other.cross, \
            self.yy_c + other.yy_c
        return s

    @property
    def features(self) -> int:
        return self.gram.shape[1] - 1

    @property
    def rows(self) -> float:
        return float(self.gram[0, -1, -1]) if len(self.gram) else 0.0

    @property
    def yy(self) -> float:
        return float(self.yy_c.sum())

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Per channel ``‖[P_c,1]θ_c − y_c‖²``, ``theta`` (C, k+1)."""
        return np.einsum("ck,ckl,cl->c", theta, self.gram, theta) \
            - 2 * np.einsum("ck,ck->c", theta, self.cross) + self.yy_c

    def residual(self, theta: np.ndarray) -> float:
        """The summed residual, ``theta`` as ``[Wᵀ; b]`` (k+1, C) like the dense sums'."""
        return float(self.residuals(np.asarray(theta).T).sum())


def _scale(sums: ChannelSums) -> np.ndarray:
    """Each channel's mean diagonal of its patch Gram matrix (the ridge's unit)."""
    k = sums.features
    return np.diagonal(sums.gram, axis1=1, axis2=2)[:, :k].mean(axis=1)


def _fit(sums: ChannelSums, theta0: np.ndarray, lam: np.ndarray, has_intercept: bool):
    """Every channel's ridge fit towards ``theta0`` (C, k+1) with strength ``lam`` (C,),
    absolute; the intercept unpenalised, or fixed at ``theta0``'s without one. NaN rows where a
    channel's system is singular."""
    k = sums.features
    n = k + 1 if has_intercept else k
    reg = sums.gram[:, :n, :n].copy()
    idx = np.arange(k)
    reg[:, idx, idx] += lam[:, None]
    rhs = sums.cross[:, :n].copy()
    rhs[:, :k] += lam[:, None] * theta0[:, :k]
    if not has_intercept:
        rhs -= sums.gram[:, :k, k] * theta0[:, k:]
    out = theta0.copy()
    try:
        out[:, :n] = np.linalg.solve(reg, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # one channel singular: solve them one by one
        for c in range(len(reg)):
            try:
                out[c, :n] = np.linalg.solve(reg[c], rhs[c])
            except np.linalg.LinAlgError:
                out[c] = np.nan
    return out


def solve(folds: list[ChannelSums], total: ChannelSums, theta0: np.ndarray,
          has_intercept: bool, ridges) -> np.ndarray | None:
    """The refitted ``θ`` (C, k+1): each channel's ridge strength of ``ridges`` (relative to its
    mean diagonal) whose fit on the first fold best predicts the second; a channel where none
    beats ``theta0`` there keeps it. None where no channel changes. With one fold empty, the
    smallest strength for every channel, unchecked."""
    fit_on, held = folds
    if min(fit_on.rows, held.rows) == 0:
        lam = np.full(len(theta0), float(ridges[0]))
    else:
        lam, best = np.full(len(theta0), np.nan), held.residuals(theta0)
        for r in ridges:
            err = held.residuals(_fit(fit_on, theta0, r * _scale(fit_on), has_intercept))
            better = np.isfinite(err) & (err < best)
            lam[better], best[better] = r, err[better]
    chosen = np.isfinite(lam)
    if not chosen.any():
        return None
    theta = _fit(total, theta0, np.where(chosen, lam, 0.0) * _scale(total), has_intercept)
    keep = ~chosen | ~np.all(np.isfinite(theta), axis=1)
    theta[keep] = theta0[keep]
    return None if keep.all() else theta
