"""Least-squares reconstruction's ridge, chosen on calibration samples held out of each fit
(pure numpy: :mod:`idapgraph.passes.reconstruct` on synthetic normal equations)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from idapgraph.passes import reconstruct as rc

SITE = rc.Site("fc", "x", "y", "w", "b", None, 0, 1, None)


def _normal(x: np.ndarray, y: np.ndarray, batch: int) -> rc.Normal:
    targets = rc.Targets([SITE])
    targets.batches = [{"y": y[i:i + batch]} for i in range(0, len(y), batch)]
    normal = rc.Normal([SITE], targets, {})
    for i in range(0, len(x), batch):
        normal({"x": x[i:i + batch]})
    return normal


def _residual(w, b, x, y) -> float:
    return float(np.sum((x @ w.T + b - y) ** 2) / np.sum(y ** 2))


def _noisy(rng, n: int, d: int):
    """Samples of a layer ``w0`` (d inputs, 10 outputs) with noisy targets."""
    w0, x = rng.normal(size=(10, d)) / np.sqrt(d), rng.normal(size=(n, d))
    return w0, x, x @ w0.T + 0.5 * rng.normal(size=(n, 10))


def test_an_output_layer_with_more_features_than_samples_is_not_refitted():
    """40 calibration samples, 200 features: a plain least-squares fit reproduces the
    calibration targets; the model's output layer is left as it is, and why is said."""
    rng = np.random.default_rng(0)
    w0, x, y = _noisy(rng, 40, 200)
    b0 = np.zeros(10)
    total = _normal(x, y, 8).total("fc")
    plain = rc._ridge_fit(total, np.r_[w0.T, b0[None]], 1e-4 * rc._scale(total, 200), True)
    assert _residual(plain[:200].T, plain[200], x, y) < 1e-3  # interpolates the calibration
    normal, head = _normal(x, y, 40), replace(SITE, head=True)
    assert rc.solve(head, normal, w0, b0, True) is None
    assert rc.underdetermined(normal, head) == "fc not refitted: 40 calibration rows for 200 inputs"
    assert rc.underdetermined(_normal(*_noisy(rng, 200, 200)[1:], 40), head) is None
    assert rc.underdetermined(normal, SITE) is None  # an inner layer: the held-out check decides


def test_few_samples_per_feature_do_not_fit_the_noise():
    """300 calibration samples, 200 features, noisy targets of a layer the current one is
    half of: a plain least-squares fit is worse on new samples than the current layer; the
    fit with the ridge chosen on held-out samples is better than both."""
    rng = np.random.default_rng(0)
    w, x, y = _noisy(rng, 300, 200)
    xn = rng.normal(size=(2000, 200))
    yn = xn @ w.T + 0.5 * rng.normal(size=(2000, 10))
    w0, b0 = 0.5 * w, np.zeros(10)
    normal = _normal(x, y, 300)  # one batch: split at its middle sample
    assert [f.rows for f in normal.folds["fc"]] == [150, 150]
    total = normal.total("fc")
    plain = rc._ridge_fit(total, np.r_[w0.T, b0[None]], 1e-4 * rc._scale(total, 200), True)
    current = _residual(w0, b0, xn, yn)
    assert _residual(plain[:200].T, plain[200], xn, yn) > current
    fit = rc.solve(SITE, normal, w0, b0, True)
    assert fit is not None
    assert _residual(fit.weight, fit.intercept, xn, yn) < 0.9 * current


def test_a_lost_channel_is_rebuilt_from_the_others():
    """Channel 0 of the input was removed (its weight column zeroed here) but equals channel 1
    plus channel 2 on the data: the fit moves its weight onto them, with new samples agreeing;
    batches (of one sample here) alternate between the folds."""
    rng = np.random.default_rng(1)
    full = rng.normal(size=(300, 6))
    full[:, 0] = full[:, 1] + full[:, 2]
    w = rng.normal(size=(4, 6))
    y = full @ w.T
    x = full[:, 1:]
    site = rc.Site("fc", "x", "y", "w", None, None, 0, 1, None)
    targets = rc.Targets([site])
    targets.batches = [{"y": y[i:i + 1]} for i in range(len(y))]
    normal = rc.Normal([site], targets, {})
    for i in range(len(x)):
        normal({"x": x[i:i + 1]})
    assert [f.rows for f in normal.folds["fc"]] == [150, 150]
    fit = rc.solve(site, normal, w[:, 1:], None, True)
    assert fit is not None and fit.residual_after < 1e-4 < fit.residual_before
    xn = rng.normal(size=(50, 5))
    yn = np.c_[xn[:, 0] + xn[:, 1], xn] @ w.T
    assert _residual(fit.weight, fit.intercept, xn, yn) < 1e-4


def test_layers_after_a_pruned_one_are_refitted_too():
    """conv1's channels pruned: conv2 lost inputs, conv3 only sees drifted ones; both are sites
    (only conv2 without ``drifted``), and compress's report records a refit of conv3."""
    import torch

    import idapgraph
    from idapgraph.ir.plan import Plan
    from idapgraph.passes import prune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(16, 3, 8, 8)
    a = idapgraph.analyze(net, (x[:1],))
    plan = Plan(remove={"w0.out": [0, 1, 2]}, meta={"backend": a.graph.backend})
    rewrite = prune.resolve(a.graph, a.coupling, plan)
    conv = [n.name for n in a.graph if n.op == "conv"]
    assert [s.node for s in rc.sites(a.graph, rewrite)] == conv[1:]
    assert [s.node for s in rc.sites(a.graph, rewrite, drifted=False)] == conv[1:2]
    res = idapgraph.compress(net, (x[:1],), plan=plan, calib=x.numpy())
    refits = {c["layer"] for c in res.report.heal["corrections"] if c["kind"] == "refit"}
    assert conv[2] in refits


def test_layers_too_wide_to_refit_are_left_out():
    """A fit's Gram is (features+1)² float64, about five of them at once: a layer reading more
    than MAX_FEATURES inputs is not refitted (FCN-ResNet50's 3x3 head over 2,048 channels took
    14 GB) and the report says so; narrower layers still are."""
    import torch

    import idapgraph
    from idapgraph.passes import reconstruct

    torch.manual_seed(0)
    wide = reconstruct.MAX_FEATURES + 800
    m = torch.nn.Sequential(torch.nn.Linear(16, wide), torch.nn.ReLU(), torch.nn.Linear(wide, 24),
                            torch.nn.ReLU(), torch.nn.Linear(24, 4)).eval()
    x = torch.randn(1, 16)
    r = idapgraph.compress(m, (x,), flops=0.97, method="magnitude", calib=torch.randn(64, 16),
                           measure_groups=False)
    notes = " ".join(r.report.heal["notes"])
    assert "not refitted, more than 9216 inputs" in notes, notes
    kept = r.model.get_submodule("2").in_features
    assert reconstruct.MAX_FEATURES < kept < wide


def test_fits_short_of_calibration_rows_are_named():
    """Every least-squares fit records its calibration rows per input feature; where some have
    fewer than THIN_ROWS the report says data is short, naming the thinnest (the 1x1 conv reads
    31 channels on 4x4 maps after the cut: 4 images give 2 rows per input, 64 images 33)."""
    import torch

    import idapgraph
    from idapgraph.cli_view import notes
    from idapgraph.ir.plan import Plan

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 16, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(64, 3, 4, 4)
    plan = Plan(remove={"w0.out": [0]}, meta={"backend": "fx"})
    few = idapgraph.compress(net, (x[:1],), plan=plan, calib=x[:4].numpy()).report
    rows = few.heal["rows_per_input"]
    conv = [n for n in rows if rows[n] == min(rows.values())]
    assert rows[conv[0]] == round(4 * 16 / 31, 2)  # 4 images x 16 positions, 31 channels left
    short = [n for n in few.heal["notes"] if n.startswith(rc.SHORT)]
    assert short and f"fewest: {conv[0]}, 2.06" in short[0], few.heal["notes"]
    rep = {**few.to_dict(), "output": None}
    assert short[0] in notes(rep)  # the CLI's summary shows it
    many = idapgraph.compress(net, (x[:1],), plan=plan, calib=x.numpy()).report
    assert min(many.heal["rows_per_input"].values()) >= rc.THIN_ROWS
    assert not [n for n in many.heal["notes"] if n.startswith(rc.SHORT)]
    assert rc.short_rows({"a": 3.0, "b": 12.0, "c": 9.5}) == (
        f"{rc.SHORT} for 2 of 3 least-squares fits (fewer than 10 rows per input; fewest: a, 3): "
        "more calibration samples usually help")
