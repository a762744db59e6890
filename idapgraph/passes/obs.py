"""Which units of a channel group go first, by the reconstruction error their removal leaves
(structured Optimal Brain Surgeon, as in OBC / ZipLM): the units are removed one at a time from
the layers that read the group's channels (its *consumers*), each time the unit whose removal,
with the consumer's other inputs refitted by least squares, raises the consumer's output error
least, summed over consumers (each relative to its output's energy).

For a consumer with input Gram matrix ``H = [X,1]ᵀ[X,1]`` (im2col patches for a conv, the
intercept column always kept) and parameters ``θ``, removing the input columns ``c`` of a unit
and refitting the rest raises ``‖[X,1]θ − Y‖²`` by ``tr(θ_cᵀ (H⁻¹_cc)⁻¹ θ_c)``; the refit is
``θ ← θ − H⁻¹_{:,c} (H⁻¹_cc)⁻¹ θ_c`` and the inverse of the reduced Gram matrix
``H⁻¹ ← H⁻¹ − H⁻¹_{:,c} (H⁻¹_cc)⁻¹ H⁻¹_{c,:}``. That is the least-squares healing
(:mod:`idapgraph.passes.reconstruct`) the emitted model gets, so the order is the one healing
can best make up for; the scores (:mod:`idapgraph.passes.divergence`) rank units without
it. Pure numpy: the Gram matrices come from a runner through :class:`Grams`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.annotations import ChannelGroup, Coupling
from ..ir.graph import PARAM, Graph
from ..ir.ops import weighted_nodes
from .reconstruct import Site, _fold_rows, _rows, add_gram, as_theta, grid_of_input, site

#: A consumer's Gram matrix must hold at least this many calibration rows per input feature:
#: with fewer, the order fits the calibration samples (EfficientNet-Lite0's classifier, 1,280
#: inputs seen on 200 images, looked nearly free to cut and the model lost 10 points of
#: held-out top-1), and the group keeps its scores.
ROWS_PER_FEATURE = 8
#: Damping added to the Gram matrix's diagonal before it is inverted, relative to its mean
#: diagonal (OBC's 1 %).
DAMP = 1e-2


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels: the site and, per unit, its input feature columns
    (a conv's ``c * kh * kw ...`` im2col columns)."""

    site: Site
    columns: np.ndarray  # (n_units, k)


def consumers(graph: Graph, coupling: Coupling) -> list[list[Consumer]]:
    """Per group: the ungrouped convs and linear layers whose weight's input axis is one of the
    group's spaces."""
    readers = {}
    for node in weighted_nodes(graph):
        s = site(graph, node)
        if s is not None and graph.tensors[s.weight].kind == PARAM:
            readers[(s.weight, s.in_axis)] = s
    return [[_consumer(graph, readers[(sp.tensor, sp.axis)], m.index)
             for m in g.members for sp in m.spaces if (sp.tensor, sp.axis) in readers]
            for g in coupling.groups]


def _consumer(graph: Graph, s: Site, index: np.ndarray) -> Consumer:
    k = int(np.prod(graph.shape(s.weight)[2:])) if s.conv is not None else 1
    cols = (np.asarray(index)[:, :, None] * k + np.arange(k)).reshape(len(index), -1)
    return Consumer(s, cols)


class Grams:
    """Reducer over a model: ``[X,1]ᵀ[X,1]`` of every consumer's input (float64), in two folds
    of calibration samples as :class:`~idapgraph.passes.reconstruct.Normal` splits them
    (alternate batches of ``batches``, or the two halves of a single batch)."""

    def __init__(self, sites: list[Site], kernels: dict[str, tuple], batches: int) -> None:
        self.sites, self.kernels, self.batches, self.i = sites, kernels, batches, 0
        self.folds: dict[str, list[np.ndarray]] = {}

    @property
    def tensors(self) -> list[str]:
        return sorted({s.x for s in self.sites})

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        self.i += 1
        for s in self.sites:
            if s.x not in values:
                continue
            x = _rows(values[s.x], s, self.kernels.get(s.node),
                      grid_of_input(s, np.shape(values[s.x])))
            d = x.shape[1]
            folds = self.folds.setdefault(s.node, [np.zeros((d + 1, d + 1)) for _ in "ab"])
            for f, rows in _fold_rows(x.shape[0], np.shape(values[s.x])[0], self.i - 1,
                                      self.batches):
                add_gram(folds[f], x[rows])

    @property
    def gram(self) -> dict[str, np.ndarray]:
        """Both folds together."""
        return {k: a + b for k, (a, b) in self.folds.items()}


class _State:
    """One consumer's running OBS state: the inverse Gram matrix and the refitted parameters."""

    def __init__(self, gram: np.ndarray, theta: np.ndarray, columns: np.ndarray) -> None:
        self.hinv = np.linalg.inv(_damped(gram))
        self.theta = theta.copy()
        self.columns = columns
        energy = float(np.sum(theta * (gram @ theta)))
        self.scale = 1.0 / max(energy, 1e-30)

    def costs(self, units: np.ndarray) -> np.ndarray:
        """The relative error increase of removing each of ``units`` next."""
        c = self.columns[units]  # (m, k)
        blocks = self.hinv[c[:, :, None], c[:, None, :]]
        tc = self.theta[c]  # (m, k, out)
        try:
            return np.einsum("mko,mko->m", tc, np.linalg.solve(blocks, tc)) * self.scale
        except np.linalg.LinAlgError:
            return np.full(len(units), np.inf)

    def remove(self, u: int) -> None:
        c = self.columns[u]
        block = self.hinv[np.ix_(c, c)]
        left = np.linalg.solve(block, self.hinv[c])  # (H⁻¹_cc)⁻¹ H⁻¹_{c,:}
        self.theta -= left.T @ self.theta[c]
        self.hinv -= self.hinv[:, c] @ left


def _damped(gram: np.ndarray) -> np.ndarray:
    """``gram`` + :data:`DAMP` × its mean feature diagonal on the features (the intercept, its
    last row and column, undamped)."""
    d = gram.shape[0] - 1
    h = gram.copy()
    h[np.arange(d), np.arange(d)] += DAMP * max(float(np.mean(np.diag(gram)[:d])), 1e-12)
    return h


def params(graph: Graph, s: Site) -> np.ndarray:
    """``θ = [Wᵀ; b]`` of a consumer: (features + 1, out)."""
    return as_theta(graph.tensors[s.weight].value(),
                    None if s.bias is None else graph.tensors[s.bias].value(), s.out_axis)


def order(group: ChannelGroup, states: list[_State], remove: int) -> tuple[list[int], list[float]]:
    """The first ``remove`` units of ``group`` to go, greedily, and the summed relative error
    increase each removal caused."""
    left, out, costs = np.arange(group.n_units), [], []
    for _ in range(min(remove, group.n_units - 1)):
        cost = sum(s.costs(left) for s in states)
        i = int(np.argmin(cost))
        u = int(left[i])
        for s in states:
            s.remove(u)
        left = np.delete(left, i)
        out.append(u)
        costs.append(float(cost[i]))
    return out, costs


def scores(group: ChannelGroup, cons: list[Consumer], folds: dict[str, list[np.ndarray]],
           graph: Graph, remove: int, base: np.ndarray) -> np.ndarray | None:
    """Unit scores from the OBS order where it beats ``base`` (the method's scores) on held-out
    calibration samples: both orders' cuts at :data:`CHECK_KEEPS` of the units, each refitted
    on the first fold (the order too computed there), their output errors measured on the
    second. Then the order on both folds: a removed unit scores the running maximum of the
    error increases up to its removal (the order kept, the magnitudes saying what each cut
    costs), a unit never removed above all of them. None (keep ``base``) where the order
    loses, or without enough calibration rows (:data:`ROWS_PER_FEATURE`)."""
    if not cons or any(c.site.node not in folds for c in cons):
        return None
    full = {c.site.node: sum(folds[c.site.node]) for c in cons}
    if any(g[-1, -1] < ROWS_PER_FEATURE * (len(g) - 1) for g in full.values()):
        return None
    thetas = [params(graph, c.site) for c in cons]
    fit = [_State(folds[c.site.node][0], t, c.columns) for c, t in zip(cons, thetas)]
    gone, _ = order(group, fit, remove)
    lowest = [int(u) for u in np.argsort(base, kind="stable")[:len(gone)]]
    if held_out(group, cons, folds, thetas, gone) >= held_out(group, cons, folds, thetas, lowest):
        return None
    gone, costs = order(group, [_State(full[c.site.node], t, c.columns)
                                for c, t in zip(cons, thetas)], remove)
    run = np.maximum.accumulate(np.asarray(costs, dtype=float)) if costs else np.zeros(0)
    out = np.full(group.n_units, 2 * (float(run[-1]) if len(run) else 0.0) + 1.0)
    for i, u in enumerate(gone):
        out[u] = run[i] + 1e-12 * i  # ties keep the removal order
    return out


#: The shares of a group's units kept where the OBS order and the scores are compared.
CHECK_KEEPS = (0.75, 0.5, 0.25)


def held_out(group: ChannelGroup, cons: list[Consumer], folds, thetas, gone: list[int]) -> float:
    """The summed relative output error, on the second fold, of removing the first units of
    ``gone`` (at each of :data:`CHECK_KEEPS`, as far as ``gone`` reaches) with each consumer
    refitted on the first fold to its original output."""
    total = 0.0
    for share in CHECK_KEEPS:
        n = min(len(gone), group.n_units - max(1, int(round(share * group.n_units))))
        if n <= 0:
            continue
        for c, theta in zip(cons, thetas):
            a, b = folds[c.site.node]
            total += _cut_error(a, b, theta, c.columns[gone[:n]].ravel())
    return total


def _cut_error(fit: np.ndarray, check: np.ndarray, theta: np.ndarray, cut: np.ndarray) -> float:
    """``(θ' − θ)ᵀ H_check (θ' − θ) / θᵀ H_check θ`` for ``θ'`` without the ``cut`` rows, the
    rest refitted by damped least squares on ``fit`` to reproduce ``[X,1]θ``."""
    keep = np.setdiff1d(np.arange(len(theta)), cut)  # the intercept (last) is always kept
    h = _damped(fit)[np.ix_(keep, keep)]
    new = np.zeros_like(theta)
    new[keep] = theta[keep] + np.linalg.solve(h, fit[np.ix_(keep, cut)] @ theta[cut])
    delta = new - theta
    return float(np.sum(delta * (check @ delta))) / max(float(np.sum(theta * (check @ theta))),
                                                         1e-30)
