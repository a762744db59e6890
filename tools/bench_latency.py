"""Latency targets on torchvision models (random weights): does ``--latency R`` land on R, and
how much of the FLOPs saving turns into speed, against FLOPs-targeted selection and
Torch-Pruning's uniform pruning at the same measured latency. A ``timm:<arch>`` model name
builds a timm model instead (random weights too).

    python3 tools/bench_latency.py [--models resnet50,mobilenet_v2,efficientnet_b0,convnext_tiny]
                                   [--targets 0.5,0.3] [--threads 1] [--runs 30] [--hog]

Per model: ``idapgraph profile`` timed in a fresh cache, then again (reuse); then per target R:
* ``latency``: ``compress(latency=R, method="magnitude", heal="none")`` (magnitude: the weights
  are random, so only the structure matters here; healing does not change the structure);
* ``flops@same``: ``compress(flops=f)`` with ``f`` bisected until its measured latency matches
  the latency-aware model's;
* ``flops=R``: the naive FLOPs target;
* ``TP uniform@same``: Torch-Pruning 1.6 MetaPruner, magnitude importance, the same ratio in
  every layer (``global_pruning=False``), exported to ONNX, ratio bisected to the same latency.
Every latency is a ratio to the original, the two timed in turns (``runners.bench.paired``:
turns of 10 runs, the first 2 not counted, ``--runs`` counted each), so a change of machine
load between two measurements cancels out -- on a 2-core EPYC VM the original alone measured
10.6-15.2 ms within a minute, and ratios of separately timed models 0.41-0.55 for one model
whose paired ratio stayed at 0.50-0.51. The bisections match ratios, and all final models are
timed again the same way (``--rounds`` paired passes each, the median ratio). Efficiency =
speedup × FLOPs kept. Prints markdown tables. ``--hog`` runs everything beside a
memory-bandwidth hog (a process copying 64 MiB arrays in a loop), to see what a loaded machine
does to the results.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch
import torchvision

import idapgraph


def export(model, x) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def lat(proto, threads: int, runs: int) -> float:
    return idapgraph.latency(proto, runs=runs, warmup=5, threads=threads)["median_ms"]


def ratio_to(original, model, threads: int, runs: int) -> tuple[float, float]:
    """(model ms / original ms, original ms), the two timed in turns (on the clock in use when
    it is not onnxruntime's: ``idapgraph.runners.clock.using``)."""
    from idapgraph.runners import clock
    from idapgraph.runners.bench import paired

    clk = clock.current()
    if isinstance(clk, clock.OrtClock):
        ref, ms = paired([original, model], runs=runs, threads=threads)
    else:
        ref, ms = clk.pair(original, model, threads=threads, provider="CPUExecutionProvider")
    return ms / ref, ref


def flops_of(proto) -> int:
    return idapgraph.analyze(proto).cost.flops


def bisect(make, original, goal: float, threads: int, runs: int, lo: float = 0.05,
           hi: float = 1.0, iters: int = 7, get=lambda m: m):
    """``make(r)`` with latency falling as ``r`` falls (``get(made)``: its ModelProto): what
    ``make`` made whose latency ratio to ``original`` (:func:`ratio_to`) is closest to
    ``goal``. Returns (r, made, ratio)."""
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = make(mid)
        q, _ = ratio_to(original, get(m), threads, runs)
        if best is None or abs(q / goal - 1) < abs(best[2] / goal - 1):
            best = (mid, m, q)
        if abs(q / goal - 1) < 0.02:
            break
        lo, hi = (lo, mid) if q > goal else (mid, hi)
    return best


def tp_uniform(model, x, ratio: float):
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=False, ignored_layers=last)
    pruner.step()
    return export(m, x)


def _hog() -> None:
    import numpy as np

    a = np.ones(8 << 20)  # 64 MiB of float64
    b = np.empty_like(a)
    while True:
        np.copyto(b, a)
        np.copyto(a, b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0,convnext_tiny")
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--hog", action="store_true", help="run beside a memory-bandwidth hog")
    args = ap.parse_args()
    if args.hog:
        import multiprocessing

        hog = multiprocessing.Process(target=_hog, daemon=True)
        hog.start()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp(prefix="idapgraph-cache-")
    os.environ["IDAPGRAPH_CACHE"] = cache
    targets = [float(t) for t in args.targets.split(",")]
    prof_rows, rows = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        if name.startswith("timm:"):  # e.g. timm:deit_small_patch16_224 (use --no-peers)
            import timm

            net = timm.create_model(name[5:], pretrained=False).eval()
        else:
            net = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        proto = export(net, x)
        f0 = flops_of(proto)
        t = time.time()
        p1 = idapgraph.profile(proto, threads=args.threads)
        first = time.time() - t
        t = time.time()
        p2 = idapgraph.profile(proto, threads=args.threads)
        second = time.time() - t
        prof_rows.append((name, p1["layers"], p1["needed"], first, p2["timed"], second,
                          p1["model_ms"], p1["tables_ms"]))
        print(f"[{name}] profile {first:.0f} s ({p1['needed']} entries), again {second:.1f} s",
              file=sys.stderr, flush=True)
        for r in targets:
            t = time.time()
            res = idapgraph.compress(proto, latency=r, method="magnitude", heal="none",
                                     threads=args.threads)
            secs = time.time() - t
            lt = res.report.latency_target
            models = {"latency": (res.model, res.report.flops_ratio)}
            goal = lt["ratio"]

            def by_flops(f):
                return idapgraph.compress(proto, flops=f, method="magnitude", heal="none").model

            fr, fm, _ = bisect(by_flops, proto, goal, args.threads, args.runs)
            models["flops@same"] = (fm, flops_of(fm) / f0)
            naive = by_flops(r)
            models[f"flops={r}"] = (naive, flops_of(naive) / f0)
            note = ""
            if not args.no_peers:
                try:
                    tr, tm, _ = bisect(lambda q: tp_uniform(net, x, 1 - q), proto, goal,
                                       args.threads, args.runs, lo=0.05, hi=1.0)
                    models["TP uniform@same"] = (tm, flops_of(tm) / f0)
                except Exception as e:  # noqa: BLE001 - a peer's failure is a result
                    note = f"Torch-Pruning failed: {type(e).__name__}: {str(e).splitlines()[0]}"
            # every final model timed again in turns with the original, in passes
            ratios: dict[str, list[float]] = {k: [] for k in models}
            refs: list[float] = []
            for _ in range(args.rounds):
                for k, (m, _) in models.items():
                    q, ref = ratio_to(proto, m, args.threads, args.runs)
                    ratios[k].append(q)
                    refs.append(ref)
            base = statistics.median(refs)
            for k, (m, fk) in models.items():
                ms = statistics.median(ratios[k]) * base
                extra = ""
                if k == "latency":
                    extra = (f"{secs:.0f} s, {len(lt['rounds'])} round(s), in-run ratio "
                             f"{lt['ratio']:.3f}, model error "
                             f"{lt['model_error']:+.1%}, blocks bypassed {len(res.plan.bypass)}, "
                             f"finest count {lt['finest']} channels")
                elif k == "flops@same":
                    extra = f"FLOPs target {fr:.3f}"
                elif k.startswith("TP"):
                    extra = f"ratio {1 - tr:.3f}"
                rows.append((name, r, k, base, ms, ms / base, fk, base / ms * fk, extra))
            if note:
                rows.append((name, r, "TP uniform@same", base, None, None, None, None, note))
            for row in rows[-len(models) - bool(note):]:
                print(row, file=sys.stderr, flush=True)
    print("| model | layers timed | table entries | first build | timed again | second build | "
          "model ms | tables sum ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, layers, need, first, again, second, mms, tms in prof_rows:
        print(f"| {n} | {layers} | {need} | {first:.0f} s | {again} | {second:.1f} s "
              f"({second / first:.1%}) | {mms:.1f} | {tms:.1f} |")
    print()
    print("| model | target | selection | original ms | ms | latency kept | FLOPs kept | "
          "efficiency | notes |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for n, r, k, base, ms, ratio, fk, eff, extra in rows:
        if ms is None:
            print(f"| {n} | {r} | {k} | {base:.1f} | — | — | — | — | {extra} |")
        else:
            print(f"| {n} | {r} | {k} | {base:.1f} | {ms:.1f} | {ratio:.3f} | {fk:.3f} | "
                  f"{eff:.2f} | {extra} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
