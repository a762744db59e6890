"""Property-based fuzzing of every rewrite (issue 7.3): random small DAGs of supported ops, random
plans over their channel groups and blocks, on torch.fx, the TorchScript and dynamo ONNX exports
and raw ONNX graphs. The invariants are in ``fuzz_checks.py``; bugs found become fixed models in
``test_fuzz_regressions.py``. Long runs: ``python3 tools/fuzz.py --examples 1000``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_cases import CASES
from fuzz_checks import Stats
from fuzz_models import specs

settings.register_profile(
    "idapgraph-fuzz", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile("idapgraph-fuzz")

# examples per route in the CI run (>= 200 in all, about two minutes on 2 cores)
BUDGET = {"fx": 90, "torchscript": 70, "raw_onnx": 70, "dynamo": 12}


def run_route(route: str, n: int, profile=PROFILE) -> Stats:
    stats = Stats()
    case = CASES[route]

    @settings(profile, max_examples=n)
    @given(spec=specs(), data=st.data())
    def prop(spec, data):
        case(spec, data, stats)

    prop()
    return stats


@pytest.mark.parametrize("route", sorted(BUDGET))
def test_fuzz(route):
    n = BUDGET[route]
    stats = run_route(route, n)
    print(route, dict(stats))
    # the run is not vacuous: every example ran, almost all were analysable, plans removed units
    assert stats["examples"] >= n
    assert stats["refused"] <= 0.05 * stats["examples"], dict(stats)
    assert stats["checked"] == stats["examples"] - stats["refused"]
    assert stats["prunable"] >= 0.4 * stats["checked"], dict(stats)
    assert stats["pruned"] >= 0.6 * stats["prunable"], dict(stats)
    if n >= 50:
        assert stats["bypassed"] >= 1, dict(stats)
