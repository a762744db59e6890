"""Time and peak memory of compressing a synthetic Llama-style decoder (random weights, built
in code: grouped-query attention, rotary, SwiGLU, RMSNorm, tied embeddings) on the torch route,
per decoder layer -- the measured part of "what changes for a 1B-8B decoder" (docs/limits.md).

    python tools/big_decoder.py [--hidden 2048] [--layers 16] [--mlp 8192] [--heads 32]
                                [--kv 8] [--vocab 32000] [--windows 4] [--seq 128]
                                [--blocks 4] [--params R] [--threads 2] [--progress]

Prints one line per phase (build, compress with ``blocks`` layers removed by the default score,
optionally ``params=R`` width pruning with the default healing) with wall seconds, seconds per
decoder layer and the process's peak RSS (``VmHWM``, reset before each phase). Calibration:
``windows`` random token windows of ``seq`` tokens. Nothing is written; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def build(a):
    import torch
    import transformers as tf

    from zoo import LogitsWrapper

    cfg = tf.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.mlp,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads,
                         num_key_value_heads=a.kv, tie_word_embeddings=True,
                         max_position_embeddings=max(256, a.seq), attn_implementation="eager")
    torch.manual_seed(0)
    return LogitsWrapper(tf.LlamaForCausalLM(cfg)).eval()


T0 = time.time()


def progress(stage: str, done: int, total) -> None:
    """compress's progress callback: one timestamped line per step (``--progress``)."""
    print(f"  [{time.time() - T0:7.1f} s] {stage} {done}/{total or '?'}", flush=True)


def phase(name: str, layers: int, fn):
    from tools.bench.llm import peak_rss

    out, sec, hwm = peak_rss(fn)
    print(f"{name}: {sec:.1f} s, {sec / layers:.1f} s a layer, peak RSS {hwm:.2f} GiB",
          flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in (("hidden", 2048), ("layers", 16), ("mlp", 8192), ("heads", 32), ("kv", 8),
                 ("vocab", 32000), ("windows", 4), ("seq", 128), ("blocks", 4), ("threads", 2)):
        p.add_argument(f"--{k}", type=int, default=v)
    p.add_argument("--params", type=float, default=None)
    p.add_argument("--progress", action="store_true", help="a line per compress step")
    a = p.parse_args()
    kw = {"progress": progress} if a.progress else {}
    import torch

    import idapgraph

    torch.set_num_threads(a.threads)
    model = phase("build", a.layers, lambda: build(a))
    n = sum(q.numel() for q in model.parameters())
    print(f"model: {n / 1e6:.0f}M parameters, {n * 4 / 2 ** 30:.2f} GiB float32, "
          f"{a.layers} layers", flush=True)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, a.vocab, (a.windows, a.seq), generator=g)
    ex = (calib[:1],)
    r = phase(f"compress blocks={a.blocks}", a.layers, lambda: idapgraph.compress(
        model, ex, calib=calib, blocks=a.blocks, block_kinds=["layer"], **kw))
    print(f"  bypassed {r.plan.bypass}", flush=True)
    del r  # its model: not held through the next phase
    if a.params is not None:
        r = phase(f"compress params={a.params}", a.layers, lambda: idapgraph.compress(
            model, ex, calib=calib, params=a.params, **kw))
        print(f"  params kept {r.report.params_after / r.report.params_before:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
