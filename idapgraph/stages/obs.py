"""Unit scores from the OBS removal order (:mod:`idapgraph.passes.obs`): the consumers' input
Gram matrices gathered on calibration data through the backend (two folds), then the order
computed per group. A group keeps its given scores where it has no consumer, too few
calibration rows, or where the order does not beat them on the held-out fold."""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..passes import obs as obs_pass
from ..passes import reconstruct as recon_pass
from ..passes import select as select_pass

#: Gram matrices gathered in one model run at most (bytes of float64, both folds).
CHUNK_BYTES = 1 << 28


def scores(a: Analysis, batches, base: list[np.ndarray], min_keep: float,
           convs_only: bool = False) -> list[np.ndarray]:
    """Per group: OBS-order scores where they win on held-out samples, else ``base``'s.
    ``convs_only``: only for groups that convolutions alone read (``order="auto"``)."""
    g = a.graph
    cons = obs_pass.consumers(g, a.coupling)
    if convs_only:
        cons = [cs if all(c.site.conv is not None for c in cs) else [] for cs in cons]
    # a reader too wide to hold its Gram (recon_pass.MAX_FEATURES) leaves its group the scores
    cons = [cs if all(recon_pass.features(g, c.site) <= recon_pass.MAX_FEATURES for c in cs) else []
            for cs in cons]
    sites = list({c.site.node: c.site for cs in cons for c in cs}.values())
    folds: dict[str, list[np.ndarray]] = {}
    for chunk in _chunks(g, sites):
        red = obs_pass.Grams(chunk, {s.node: recon_pass.kernel(g, s) for s in chunk},
                             len(batches))
        a.model.run(a.model.source, red.tensors, batches, red)
        folds.update(red.folds)
    out = []
    for grp, cs, s in zip(a.coupling.groups, cons, base):
        lo = select_pass.min_kept(grp.n_units, min_keep)
        got = obs_pass.scores(grp, cs, folds, g, grp.n_units - lo, s) if cs else None
        out.append(s if got is None else got)
    return out


def _chunks(g, sites):
    chunk, size = [], 0
    for s in sites:
        d = recon_pass.features(g, s) + 1
        if chunk and size + 2 * d * d * 8 > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(s)
        size += 2 * d * d * 8
    if chunk:
        yield chunk
