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
