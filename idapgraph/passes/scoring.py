"""Channel-group importance scores (baselines). Higher means more important.

* ``magnitude``: for every parameter axis in the group, the L2 norm of each unit's weight
  slices, divided by that axis' mean over units (so layers of different scale compare); the
  group's unit score is the mean of these normalised norms over its parameter axes.
* ``random``: seeded uniform scores.
"""

from __future__ import annotations

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import PARAM, Graph


def magnitude(graph: Graph, coupling: Coupling) -> list[np.ndarray]:
    cache: dict[tuple[str, int], np.ndarray] = {}

    def sq_norms(tensor: str, axis: int) -> np.ndarray:
        key = (tensor, axis)
        if key not in cache:
            v = np.asarray(graph.tensors[tensor].value(), dtype=np.float64)
            other = tuple(a for a in range(v.ndim) if a != axis)
            cache[key] = np.sum(v * v, axis=other) if other else v * v
        return cache[key]

    scores = []
    for g in coupling.groups:
        total = np.zeros(g.n_units)
        n = 0
        for m in g.members:
            for s in m.spaces:
                t = graph.tensors[s.tensor]
                if t.kind != PARAM or not t.trainable:
                    continue
                per_unit = np.sqrt(sq_norms(s.tensor, s.axis)[m.index].sum(axis=1))
                mean = per_unit.mean()
                if mean > 0:
                    total += per_unit / mean
                    n += 1
        scores.append(total / n if n else np.ones(g.n_units))
    return scores


def random(coupling: Coupling, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(g.n_units) for g in coupling.groups]


METHODS = ("magnitude", "random")


def score(method: str, graph: Graph, coupling: Coupling, seed: int = 0) -> list[np.ndarray]:
    if method == "magnitude":
        return magnitude(graph, coupling)
    if method == "random":
        return random(coupling, seed)
    raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
