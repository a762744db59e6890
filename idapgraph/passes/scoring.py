"""Channel-group importance scores. Higher means more important.

Every score is built the same way: each *member* of a group (a parameter axis, or a layer's
channels) gives one number per unit; a member's numbers are divided by their mean over the
group's units (so layers of different scale compare), and a unit's score is the mean over members.
Then one global ranking across groups.

* ``magnitude``: members are the group's trainable parameter axes; per unit, the L2 norm of the
  unit's weight slices.
* ``taylor``: members are parameter axes; per unit, the sum of |w · dL/dw| over its slices
  (gradients from a calibration runner, torch only).
* ``idap``: information-flow divergence, see :mod:`idapgraph.passes.divergence`.
* ``random``: seeded uniform.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir.annotations import ChannelGroup, Coupling, Member
from ..ir.graph import PARAM, Graph
from ..ir.ops import Space

Term = Callable[[ChannelGroup, Member, Space], "np.ndarray | None"]


def combine(coupling: Coupling, term: Term) -> list[np.ndarray]:
    """Mean over members of mean-normalised per-unit member scores (see module doc)."""
    scores = []
    for g in coupling.groups:
        total = np.zeros(g.n_units)
        n = 0
        for m in g.members:
            for s in m.spaces:
                per_unit = term(g, m, s)
                if per_unit is None:
                    continue
                mean = float(np.mean(per_unit))
                if mean > 0 and np.isfinite(mean):
                    total += per_unit / mean
                    n += 1
        scores.append(total / n if n else np.ones(g.n_units))
    return scores


def _per_index(values: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(values.ndim) if a != axis)
    return np.sum(values, axis=other) if other else values


def _squares_per_index(values: np.ndarray, axis: int) -> np.ndarray:
    """Sum of squares of the slices along ``axis``, in float32 or wider (a ranking needs no
    more), without a squared or transposed copy of the tensor."""
    v = np.asarray(values)
    if v.dtype.itemsize < 4 or v.dtype.kind != "f":
        v = v.astype(np.float32)
    subs = "".join(chr(ord("a") + i) for i in range(v.ndim))
    return np.einsum(f"{subs},{subs}->{subs[axis]}", v, v).astype(np.float64)


def magnitude(graph: Graph, coupling: Coupling) -> list[np.ndarray]:
    cache: dict[tuple[str, int], np.ndarray] = {}

    def term(g, m, s):
        t = graph.tensors[s.tensor]
        if t.kind != PARAM or not t.trainable:
            return None
        if (s.tensor, s.axis) not in cache:
            cache[(s.tensor, s.axis)] = _squares_per_index(t.value(), s.axis)
        return np.sqrt(cache[(s.tensor, s.axis)][m.index].sum(axis=1))

    return combine(coupling, term)


def taylor(graph: Graph, coupling: Coupling, importance: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``importance[param]`` is |w · dL/dw| entry by entry (from a runner)."""

    def term(g, m, s):
        if s.tensor not in importance or not graph.tensors[s.tensor].trainable:
            return None
        return _per_index(np.asarray(importance[s.tensor], dtype=np.float64), s.axis)[m.index].sum(axis=1)

    return combine(coupling, term)


def random(coupling: Coupling, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(g.n_units) for g in coupling.groups]


METHODS = ("idap", "magnitude", "taylor", "random")
NEEDS_DATA = {"idap", "taylor"}
