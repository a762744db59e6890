"""Depthwise convolutions refitted channel by channel (:mod:`idapgraph.passes.channelwise`
through :mod:`idapgraph.passes.reconstruct`): the sums on im2col patches, the fit, and the
layer found in a real model's graph."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from idapgraph.ir.ops import weighted_nodes
from idapgraph.passes import reconstruct as rc

CONV = {"stride": [1, 1], "pads": [0, 0, 0, 0], "dilation": [1, 1], "depthwise": True}
SITE = rc.Site("dw", "x", "y", "w", "b", CONV, 0, 1, None)


def _normal(xs, ys) -> rc.Normal:
    targets = rc.Targets([SITE])
    targets.batches = [{"y": y} for y in ys]
    normal = rc.Normal([SITE], targets, {"dw": (3, 3)})
    for x in xs:
        normal({"x": x})
    return normal


def test_a_channelwise_drift_is_undone_and_clean_channels_are_kept():
    """The input of a 3x3 depthwise conv drifted by a per-channel scale and shift (channel 0
    did not drift): the fit gives each drifted channel back the original's outputs exactly
    (``w / a`` and the bias less the shift's share), and channel 0 keeps its weights."""
    rng = np.random.default_rng(0)
    c = 6
    w = rng.normal(size=(c, 1, 3, 3)).astype(np.float32)
    b = rng.normal(size=c).astype(np.float32)
    a, d = rng.uniform(0.5, 2.0, size=c), rng.normal(size=c)
    a[0], d[0] = 1.0, 0.0
    xs, ys, drifted = [], [], []
    for _ in range(6):  # batches of 2 images alternate between the two folds
        x = rng.normal(size=(2, c, 9, 9)).astype(np.float32)
        xs.append(x)
        ys.append(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                           groups=c).numpy())
        drifted.append((x * a[None, :, None, None] + d[None, :, None, None]).astype(np.float32))
    normal = _normal(drifted, ys)
    assert rc.underdetermined(normal, SITE) is None  # 6 x 2 x 49 rows for 9 inputs
    fit = rc.solve(SITE, normal, w, b, True)
    assert fit is not None and fit.residual_after < 1e-8 < fit.residual_before
    new_w = rc.weight_update(fit, w)
    assert new_w.shape == w.shape
    np.testing.assert_allclose(new_w[:, 0].reshape(c, 9), w[:, 0].reshape(c, 9) / a[:, None],
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.intercept, b - w.reshape(c, 9).sum(1) * d / a, rtol=1e-3)
    np.testing.assert_allclose(new_w[0], w[0], atol=1e-5)  # (float32 noise aside)
    assert abs(fit.intercept[0] - b[0]) < 1e-5
    out = F.conv2d(torch.from_numpy(drifted[0]), torch.from_numpy(new_w),
                   torch.from_numpy(fit.intercept.astype(np.float32)), groups=c).numpy()
    np.testing.assert_allclose(out, ys[0], atol=1e-3)


def test_without_an_intercept_the_bias_stays():
    """A scale-only drift refitted with the intercept fixed (a layer that cannot take a new
    bias): the weights undo it, the bias is the current one."""
    rng = np.random.default_rng(1)
    c = 4
    w = rng.normal(size=(c, 1, 3, 3)).astype(np.float32)
    a = rng.uniform(0.5, 2.0, size=c)
    xs = [rng.normal(size=(1, c, 8, 8)).astype(np.float32) for _ in range(4)]
    ys = [F.conv2d(torch.from_numpy(x), torch.from_numpy(w), groups=c).numpy() for x in xs]
    normal = _normal([(x * a[None, :, None, None]).astype(np.float32) for x in xs], ys)
    fit = rc.solve(SITE, normal, w, None, False)
    assert fit is not None and fit.residual_after < 1e-8
    assert np.all(fit.intercept == 0)
    np.testing.assert_allclose(fit.weight, w.reshape(c, 9) / a[:, None], rtol=1e-3, atol=1e-4)


def test_the_depthwise_convs_of_mobilenet_are_refit_sites():
    """torchvision's MobileNetV2 (random weights) on the fx route: each depthwise conv is a
    refit site (one input channel per output channel), the dense convs stay dense sites, and
    the classifier is the model's output layer."""
    import torchvision

    from idapgraph.frontends.fx import to_ir, trace

    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    graph = to_ir(trace(model, (torch.zeros(1, 3, 64, 64),)))
    convs = [n for n in graph if n.op == "conv"]
    dw = [n for n in convs if rc.depthwise_site(graph, n) is not None]
    dense = [n for n in convs if rc.site(graph, n) is not None]
    assert len(dw) == 17 and len(dense) == len(convs) - 17
    assert not {n.name for n in dw} & {n.name for n in dense}
    # the classifier is the one output layer (refitted only on as many rows as inputs)
    heads = [n.name for n in weighted_nodes(graph) if rc._head(graph, n.outputs[0])]
    assert heads == ["classifier_1"]
