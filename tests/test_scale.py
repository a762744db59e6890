"""Analysis grows linearly with the graph: 4x the nodes may execute at most 6x the Python lines
(a quadratic pass gives ~16x). Counted, not timed, so the bound holds on a loaded machine; the
times themselves are a benchmark (``tools/bench_scale.py``, BENCHMARKS.md)."""

from __future__ import annotations

import os
import sys

import pytest

import scale_models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_scale  # noqa: E402


@pytest.fixture(scope="module")
def counts():
    small, big = scale_models.build(600), scale_models.build(2400)
    bench_scale.analyse(scale_models.build(300))  # imports and first-call costs out of the way
    return (len(small.graph.node), len(big.graph.node),
            bench_scale.lines_executed(bench_scale.analyse, small),
            bench_scale.lines_executed(bench_scale.analyse, big))


def test_analysis_cost_grows_linearly(counts):
    n_small, n_big, c_small, c_big = counts
    assert n_big >= 4 * n_small - 100
    assert c_big / c_small < 6, f"{n_small} nodes: {c_small} lines, {n_big} nodes: {c_big} lines"


def test_the_line_counter_sees_a_quadratic_pass():
    """The counter the bound rests on tells a quadratic loop from a linear one."""
    def pairs(n):
        return sum(1 for i in range(n) for j in range(n) if i < j)

    def singles(n):
        return sum(1 for i in range(n))

    assert bench_scale.lines_executed(pairs, 400) / bench_scale.lines_executed(pairs, 100) > 12
    assert bench_scale.lines_executed(singles, 400) / bench_scale.lines_executed(singles, 100) < 5


def test_scale_graph_is_analysed_fully():
    """The synthetic graph couples what it should: one group per block's inner channels, the
    residual stream (touching the model input/output) frozen."""
    import idapgraph
    from idapgraph.passes import blocks

    model = scale_models.build(300)
    a = idapgraph.analyze(model)
    found = blocks.find(a.graph)
    n_blocks = sum(1 for n in model.graph.node if n.op_type == "Add")
    assert len(found) == n_blocks
    assert a.coupling.groups and a.cost.flops > 0


def _compress(model):
    import idapgraph

    idapgraph.compress(model, flops=0.5, method="magnitude", heal="none")


@pytest.fixture(scope="module")
def compress_counts():
    small, big = scale_models.build(800), scale_models.build(1600)
    _compress(scale_models.build(300))  # imports and first-call costs out of the way
    return (len(small.graph.node), len(big.graph.node),
            bench_scale.lines_executed(_compress, small), bench_scale.lines_executed(_compress, big))


def test_compress_cost_grows_linearly(compress_counts):
    """All of ``compress`` (analysis, selection, emission, validation, report) on twice the
    nodes executes at most 2.3x the Python lines (measured: 2.02x). Selection's search over
    candidate prefixes recounts only what changed since its previous probe; counting the whole
    graph per probe adds a log factor (its lines grew 2.13x at 2x the nodes)."""
    n_small, n_big, c_small, c_big = compress_counts
    assert n_big >= 2 * n_small - 50
    assert c_big / c_small < 2.3, f"{n_small} nodes: {c_small} lines, {n_big} nodes: {c_big} lines"


def test_compress_opens_one_unoptimised_onnxruntime_session(monkeypatch):
    """onnxruntime's own cost is native (no Python lines): its session set-up grows with the
    square of the initializer count, its graph optimisers (Conv+BN fusion, NCHWc) likewise.
    Validation opens one session, on the output, without them; the source is not run while the
    output's shapes match the inferred ones."""
    from idapgraph.emit import validate

    opened = []
    real = validate.session

    def session(model, *a, **k):
        opened.append(k.get("optimize", True))
        return real(model, *a, **k)

    monkeypatch.setattr(validate, "session", session)
    _compress(scale_models.build(300))
    assert opened == [False]
