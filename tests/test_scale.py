"""Analysis grows linearly with the graph: 4x the nodes may cost at most 6x the time (a bound on
the growth ratio with room for noise, not an absolute time; a quadratic pass gives ~16x).
Timed in CPU seconds of this process, which other load on the machine disturbs less than wall
time."""

from __future__ import annotations

import os
import sys

import pytest

import scale_models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_scale  # noqa: E402


@pytest.fixture(scope="module")
def timings():
    small, big = scale_models.build(2500), scale_models.build(10000)
    bench_scale.analyse(scale_models.build(300))  # imports and first-call costs out of the way
    t_small = min(bench_scale.analyse(small)["total_cpu"] for _ in range(2))
    t_big = bench_scale.analyse(big)["total_cpu"]
    return len(small.graph.node), len(big.graph.node), t_small, t_big


def test_analysis_time_grows_linearly(timings):
    n_small, n_big, t_small, t_big = timings
    assert n_big >= 4 * n_small - 100
    assert t_big / t_small < 6, f"{n_small} nodes: {t_small:.2f} s, {n_big} nodes: {t_big:.2f} s"


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
