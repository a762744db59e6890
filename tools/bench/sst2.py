"""SST-2 accuracy of a fixed probe on compressed all-MiniLM-L6-v2 embeddings, training-free.

    python3 -m tools.bench.sst2 [--quick] [--out DIR]

A logistic-regression probe is fitted once, on the ORIGINAL encoder's embeddings of 8,000 GLUE
SST-2 training phrases, then applied unchanged to each compressed encoder's embeddings of the
872 dev sentences (the canonical dev set, ``../shared/data/sst2``): the accuracy a user of a
downstream classifier keeps when the encoder under it is swapped. Calibration: 256 other
training phrases (disjoint from the probe's). Tokens: 64 (pad/truncate). Ours: the ONNX route
(``idapgraph.compress(model.onnx, flops=F, calib=...)``, defaults, and the counts from the
scores alone); Torch-Pruning MetaPruner on
the HF BertModel as in ``tools.bench.minilm`` (heads + MLP units, one global ratio, the hidden
width kept; the encoder has no BatchNorm to re-estimate).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np

from . import common
from .common import SPEED_HEADERS, Section, Table
from .minilm import tp_after, tp_ignored, tp_kwargs
from .peers import torch_pruning

SST2 = Path(os.environ.get("IDAPGRAPH_DATA", common.ROOT.parent / "shared" / "data")) / "sst2"
SEQ = 64
PROBE, CALIB = 8000, 256
# ours: the defaults (counts allocated by measured group losses), then the counts from the
# scores alone (measure_groups=False: the default before the thirteenth session) for idap and
# the baseline criteria
ROWS = [("ours idap", {}),
        *((f"ours {m}, scores-only counts", {"method": m, "measure_groups": False})
          for m in ("idap", "magnitude", "random"))]


def phrases(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def splits():
    """(probe texts, probe labels, calibration texts, dev texts, dev labels): a seeded
    permutation of the training phrases gives the probe's 8,000 and the next 256 calibrate."""
    train, y_train = phrases(SST2 / "train.tsv")
    dev, y_dev = phrases(SST2 / "dev.tsv")
    order = np.random.default_rng(0).permutation(len(train))
    probe, cal = order[:PROBE], order[PROBE:PROBE + CALIB]
    return ([train[i] for i in probe], y_train[probe], [train[i] for i in cal], dev, y_dev)


def run(quick: bool, out: Path) -> Section:
    import minilm
    import torch
    from helpers import export_onnx
    from sklearn.linear_model import LogisticRegression

    import idapgraph

    t0 = time.time()
    common.setup(1)
    torch.set_num_threads(2)  # embedding 8,000 phrases once; latency stays at 1 thread
    model, tok = minilm.load()
    probe_x, probe_y, cal_x, dev_x, dev_y = splits()
    probe_t, cal, dev = (minilm.tokens(tok, t, SEQ) for t in (probe_x, cal_x, dev_x))
    example = (torch.from_numpy(dev[0][:2]), torch.from_numpy(dev[1][:2]))
    axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}

    def export(m):
        return export_onnx(m, example, input_names=["input_ids", "attention_mask"],
                           dynamic_axes=axes)

    proto = export(model)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(minilm.embed(model, *probe_t), probe_y)
    torch.set_num_threads(1)
    feeds = {"input_ids": cal[0], "attention_mask": cal[1]}
    base_flops, base_params = common.flops(proto), common.params(proto)

    def acc(m) -> float:
        return 100 * float(np.mean(clf.predict(minilm.embed(m, *dev)) == dev_y))

    def cost(p) -> list:
        f = common.flops(p) / base_flops
        return [f, common.params(p) / base_params, *common.speed(proto, p, f).cells()]

    original = acc(proto)
    t = Table("FLOPs target", "method", "SST-2 dev accuracy %", "FLOPs kept", "params kept",
              *SPEED_HEADERS, "compress s")
    t.add(1.0, "original", f"{original:.2f}", 1.0, 1.0, None, None, None, None)
    series: dict = {}
    ids, mask = torch.from_numpy(cal[0][:32]), torch.from_numpy(cal[1][:32])
    grads = lambda m: m.bert(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()  # noqa: E501,E731
    for target in (0.7,) if quick else (0.85, 0.7, 0.5):
        for label, kw in ROWS[:1] if quick else ROWS:
            r, took = common.timed(idapgraph.compress, proto, flops=target, calib=feeds,
                                   seed=common.SEED, **kw)
            a = acc(r.model)
            t.add(target, label, f"{a:.2f}", *cost(r.model), f"{took:.0f}")
            series.setdefault(label, []).append((r.report.flops_ratio, a))
        for imp in ("magnitude",) if quick else ("magnitude", "taylor"):
            r, took = common.timed(torch_pruning, model, example, target, imp,
                                   ignored=tp_ignored, gradients=grads, setup=tp_kwargs,
                                   after=tp_after)
            if r.model is None:
                t.add(target, f"TP {imp}", f"failed: {r.error}", *[None] * 6)
                continue
            a = acc(r.model)
            t.add(target, r.label(f"TP {imp}", "ratio", target), f"{a:.2f}",
                  *cost(export(r.model)), f"{took:.0f}")
            series.setdefault(f"TP {imp}", []).append((r.kept, a))
    s = Section("all-MiniLM-L6-v2 on SST-2: a fixed probe's dev accuracy, training-free")
    s.blocks += [
        f"Probe: scikit-learn LogisticRegression (C=1) on the original encoder's mean-pooled "
        f"embeddings of {PROBE} SST-2 training phrases (seeded permutation), applied unchanged "
        f"to every compressed encoder; {CALIB} other training phrases calibrate; the 872 dev "
        f"sentences evaluate; {SEQ} tokens. Original: {original:.2f} %. Latency: onnxruntime "
        "CPU, batch 1, 1 thread, the original timed right before each row.", t.markdown()]
    s.plots.append(common.plot(out / "sst2.png", "all-MiniLM-L6-v2: SST-2 probe vs FLOPs kept",
                               "dev accuracy %", series, original))
    s.seconds = time.time() - t0
    return s


if __name__ == "__main__":
    raise SystemExit(common.standalone(run, __doc__.splitlines()[0]))
