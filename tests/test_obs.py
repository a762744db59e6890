"""The OBS removal order (:mod:`idapgraph.passes.obs`): its predicted error increases are the
least-squares refit's, exactly; it removes what the other inputs can rebuild first; and it maps a
conv's channels onto im2col columns of the layer that reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idapgraph.ir.annotations import ChannelGroup, Member
from idapgraph.ir.ops import Space
from idapgraph.passes import obs
from idapgraph.passes import reconstruct as rc


def _grams(*batches: np.ndarray) -> obs.Grams:
    g = obs.Grams([rc.Site("fc", "x", "y", "w", "b", None, 0, 1, None)], {}, len(batches))
    for x in batches:
        g({"x": x})
    return g


def _gram(x: np.ndarray) -> np.ndarray:
    return _grams(x).gram["fc"]


def _group(n: int) -> ChannelGroup:
    return ChannelGroup("g", [Member([Space("x", 1)], np.arange(n)[:, None])], Space("x", 1))


def _refit_error(x, y, keep) -> float:
    """‖[X_keep, 1]θ − Y‖² at the least-squares optimum."""
    a = np.c_[x[:, keep], np.ones(len(x))]
    theta, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(np.sum((a @ theta - y) ** 2))


@pytest.mark.parametrize("k", [1, 3])
def test_predicted_increase_is_the_refit_residual(monkeypatch, k):
    """Units of ``k`` columns removed one after the other: each step's predicted increase
    (relative to the output energy) equals the exact least-squares residual's increase (no
    damping), whatever unit goes."""
    monkeypatch.setattr(obs, "DAMP", 0.0)
    rng = np.random.default_rng(0)
    n = 5
    x = rng.normal(size=(400, n * k)) @ rng.normal(size=(n * k, n * k))
    theta = rng.normal(size=(n * k + 1, 3))
    y = np.c_[x, np.ones(len(x))] @ theta
    cols = np.arange(n * k).reshape(n, k)
    state = obs._State(_gram(x), theta, cols)
    energy = float(np.sum(y ** 2))
    left, before = list(range(n)), 0.0
    for u in (3, 0, 4):
        pred = float(state.costs(np.array([u]))[0]) * energy
        left.remove(u)
        after = _refit_error(x, y, cols[left].ravel())
        assert pred == pytest.approx(after - before, rel=1e-6, abs=1e-6 * energy)
        state.remove(u)
        before = after


def test_a_unit_the_others_rebuild_goes_first(monkeypatch):
    """Input 0 equals inputs 1 + 2 (so any of the three is the other two's combination) and
    carries by far the largest weight, inputs 3-5 small ones: one of 0-2 costs next to nothing
    once the rest are refitted, so it goes first although a weight magnitude would remove 3-5
    first; the next removal costs far more (damping small, as the identity needs)."""
    monkeypatch.setattr(obs, "DAMP", 1e-6)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6))
    x[:, 0] = x[:, 1] + x[:, 2]
    theta = np.r_[rng.normal(size=(6, 4)), np.zeros((1, 4))]
    theta[0] = 10.0
    state = obs._State(_gram(x), theta, np.arange(6)[:, None])
    gone, costs = obs.order(_group(6), [state], 2)
    assert gone[0] in (0, 1, 2)
    assert costs[0] < 1e-2 * costs[1]


class _T:
    def __init__(self, v):
        self.v = v

    def value(self):
        return self.v


def _graph(w: np.ndarray):
    class _G:
        tensors = {"w": _T(w)}
    return _G()


def _cons(n: int) -> list:
    return [obs.Consumer(rc.Site("fc", "x", "y", "w", None, None, 0, 1, None),
                         np.arange(n)[:, None])]


def test_too_few_rows_per_feature_keeps_the_scores():
    """A consumer seen on fewer calibration rows than ROWS_PER_FEATURE per input would let the
    order fit the samples: no OBS scores for the group."""
    rng = np.random.default_rng(2)
    g, base = _graph(rng.normal(size=(3, 8))), np.arange(8.0)[::-1].copy()
    few = _grams(rng.normal(size=(8 * obs.ROWS_PER_FEATURE - 1, 8))).folds
    enough = _grams(rng.normal(size=(8 * obs.ROWS_PER_FEATURE, 8))).folds
    assert obs.scores(_group(8), _cons(8), few, g, 4, base) is None
    got = obs.scores(_group(8), _cons(8), enough, g, 4, -base)  # scores that remove the wrong end
    assert got is not None and len(got) == 8
    # four units ordered (rising scores), the other four above them all
    low = np.sort(got)[:4]
    assert np.all(np.diff(low) >= 0) and np.min(np.sort(got)[4:]) > low[-1]


@pytest.mark.parametrize("same_on_both_folds", [True, False])
def test_the_order_must_win_on_the_held_out_fold(same_on_both_folds):
    """Input 0 copies input 1 on the first fold, so the order fitted there
    removes it first as free. Where the copy holds on the second fold too, the order wins and
    is used; where it does not, removing input 0 costs its whole contribution there, the
    scores (the magnitude order, 4 first) win and are kept (None)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    a[:, 0] = a[:, 1]
    if same_on_both_folds:
        b[:, 0] = b[:, 1]
    w = np.array([[1.0, 0.9, 2.0, 0.3, 0.2]])
    base = np.abs(w[0])
    got = obs.scores(_group(5), _cons(5), _grams(a, b).folds, _graph(w), 4, base)
    if same_on_both_folds:
        assert got is not None and int(np.argmin(got)) in (0, 1)
    else:
        assert got is None


def _duplicated_channel_net():
    """Conv 3->16->8 then a classifier; conv1's channel 5 is a copy of channel 2 and both carry
    the next conv's largest weights."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(8, 10))
    with torch.no_grad():
        m[0].weight[5], m[0].bias[5] = m[0].weight[2], m[0].bias[2]
        m[2].weight[:, (2, 5)] *= 2
    return m.eval()


@pytest.mark.parametrize("route", ["fx", "onnx"])
def test_the_copy_of_a_channel_goes_first_on_both_backends(route):
    """Through the backend (the consumer's Gram matrix gathered on calibration data, a 3x3
    conv's channels as 9 im2col columns each): the first unit the order removes from conv1's
    group is one of the two copies, which the idap scores rank highest."""
    from helpers import export_onnx

    from idapgraph.analysis import analyze
    from idapgraph.stages import obs as obs_stage
    from idapgraph.stages import select as select_stage

    m = _duplicated_channel_net()
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = analyze(m, (x[:1],)) if route == "fx" else analyze(export_onnx(m, (x[:1],)))
    cal, real = a.model.calibration(x.numpy() if route == "onnx" else x, 0)
    assert real
    base = select_stage.scores(a, "idap", cal, None, 0)
    got = obs_stage.scores(a, cal, base, 0.1)
    i = [g.key for g in a.coupling.groups].index("w0.out")
    assert int(np.argmin(got[i])) in (2, 5)
    assert {2, 5} <= set(np.argsort(base[i])[-3:])  # the scores would keep both to the last


def test_auto_orders_only_groups_that_convolutions_read():
    """``convs_only`` (``order="auto"``): the conv-read group gets the OBS order, the group the
    classifier (a linear layer) reads keeps its scores; without it both may change."""
    from idapgraph.analysis import analyze
    from idapgraph.stages import obs as obs_stage
    from idapgraph.stages import select as select_stage

    m = _duplicated_channel_net()
    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = analyze(m, (x[:1],))
    cal, _ = a.model.calibration(x, 0)
    base = select_stage.scores(a, "idap", cal, None, 0)
    keys = [g.key for g in a.coupling.groups]
    auto = obs_stage.scores(a, cal, base, 0.1, convs_only=True)
    assert np.array_equal(auto[keys.index("w1.out")], base[keys.index("w1.out")])  # read by fc
    assert not np.array_equal(auto[keys.index("w0.out")], base[keys.index("w0.out")])
    every = obs_stage.scores(a, cal, base, 0.1)
    assert not np.array_equal(every[keys.index("w1.out")], base[keys.index("w1.out")])
