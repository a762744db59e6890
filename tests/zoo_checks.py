"""Checks shared by the zoo test files (``test_zoo.py``: fx, TorchScript exports and cross-backend
plans; ``test_zoo_dynamo.py``: dynamo exports -- two files, so that pytest-xdist's per-file
distribution runs them on both workers)."""

from __future__ import annotations

import numpy as np
import onnx

import idapgraph
from helpers import export_onnx, onnx_out, rel_err
from zoo import build


def feeds(proto, args):
    init = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in init]
    return {n: a.numpy() for n, a in zip(names, args)}


def check_report(r, name):
    """Every zoo model is prunable to the test's 0.6 FLOPs target, the transformers (ViT, Swin,
    BERT, GPT-2: heads and MLP units) as well as the CNNs: an empty plan fails."""
    rep = r.report
    assert r.plan.remove and rep.units_removed == r.plan.n_removed > 0, f"{name}: nothing pruned"
    assert rep.flops_after < rep.flops_before
    assert all("internal:" not in f["reason"] for f in rep.frozen), rep.frozen
    assert rep.params_after < rep.params_before, f"{name}: params not reduced"
    assert rep.reached and rep.flops_ratio <= 0.6 + 1e-9, (name, rep.reached, rep.flops_ratio)


def check_onnx_route(name: str, exporter: str) -> None:
    """``name`` exported by ``exporter`` (``ts`` or ``dynamo``), compressed to 0.6 FLOPs: valid,
    and equal to the original with the removed channels zeroed."""
    model, args = build(name)
    proto = export_onnx(model, args, dynamo=exporter == "dynamo")
    r = idapgraph.compress(proto, flops=0.6, method="random", heal="none")
    check_report(r, name)
    onnx.checker.check_model(r.model, full_check=True)
    fd = feeds(proto, args)
    zero = idapgraph.apply_plan(proto, r.plan, mode="zero")
    got, want, ref = onnx_out(r.model, fd), onnx_out(zero, fd), onnx_out(proto, fd)
    assert [g.shape for g in got] == [w.shape for w in ref]
    assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-4
    assert np.abs(ref[0]).max() > 0  # the comparison is not vacuous
