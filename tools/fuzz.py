"""Long fuzzing runs of every rewrite: the property of ``tests/test_fuzz.py`` on many more examples.

Unlike the CI test it does not stop at the first failure: every failing example is recorded
(route, exception, the model spec and the plan) and the run goes on. Prints the number of
examples run per route, the failures and the wall time; exits 1 if anything failed.

Usage::

    python3 tools/fuzz.py --examples 1000 [--routes fx,aten,torchscript,raw_onnx,compress,parity,dynamo]
                          [--seed N] [--max-steps 8] [--out failures.txt]

``--out`` also pickles the failing specs to ``failures.txt.pkl`` (load with ``tests/`` on
``sys.path``; ``fuzz_torch.build(spec)`` rebuilds the model).

Examples are split over the routes by weight (dynamo export is slow: it gets a small share).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

WEIGHTS = {"fx": 4, "aten": 1, "torchscript": 3, "raw_onnx": 3, "compress": 2, "parity": 2,
           "dynamo": 0.5}


def run(route: str, n: int, seed: int, max_steps: int, failures: list) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from fuzz_cases import CASES
    from fuzz_checks import Stats
    from fuzz_models import specs

    stats = Stats()
    case = CASES[route]

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=specs(max_steps=max_steps), data=st.data())
    def prop(spec, data):
        stats.plan = None
        try:
            case(spec, data, stats)
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the run goes on
            if type(e).__name__ in ("StopTest", "Frozen"):  # hypothesis' own control flow
                raise
            stats["failed"] += 1
            stats["examples"] += 1
            plan = getattr(stats, "plan", None)  # a Plan, or compress' settings
            plan = plan.to_json(indent=None) if hasattr(plan, "to_json") else repr(plan)
            failures.append((route, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                             spec, plan, traceback.format_exc(limit=-4)))

    prop()
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--routes", default=",".join(WEIGHTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--out", help="write every failure (spec, plan, traceback) to this file")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)  # tiny models: more threads only add synchronisation
    routes = [r for r in args.routes.split(",") if r]
    unknown = set(routes) - set(WEIGHTS)
    if unknown:
        ap.error(f"unknown route(s) {sorted(unknown)}; choose from {', '.join(WEIGHTS)}")
    total_w = sum(WEIGHTS[r] for r in routes)
    failures: list = []
    t0 = time.time()
    total = failed = 0
    for r in routes:
        n = max(1, round(args.examples * WEIGHTS[r] / total_w))
        t = time.time()
        s = run(r, n, args.seed, args.max_steps, failures)
        total += s["examples"]
        failed += s["failed"]
        print(f"{r:12s} examples {s['examples']:5d}  failed {s['failed']:3d}  refused {s['refused']:3d}  "
              f"pruned {s['pruned']:4d}  bypassed {s['bypassed']:3d}  {time.time() - t:7.1f}s",
              flush=True)
        shown = {"examples", "failed", "refused", "pruned", "bypassed", "checked"}
        extra = {k: v for k, v in s.items() if k not in shown}
        if extra:
            print(f"{'':12s} {extra}")
    print(f"total: {total} examples, {failed} failures, {time.time() - t0:.1f}s")
    kinds: dict[str, int] = {}
    for route, err, *_ in failures:
        kinds[f"{route}: {err[:160]}"] = kinds.get(f"{route}: {err[:160]}", 0) + 1
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {v:4d} x {k}")
    if args.out:
        with open(args.out, "w") as f:
            for route, err, spec, plan, tb in failures:
                f.write(f"== {route}: {err}\n{spec!r}\nplan: {plan}\n{tb}\n")
        with open(args.out + ".pkl", "wb") as f:  # the specs, to rebuild a failing model
            pickle.dump([(route, err, spec, plan) for route, err, spec, plan, _ in failures], f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
