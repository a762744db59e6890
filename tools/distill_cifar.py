"""Short CPU distillation after training-free compression: pretrained CIFAR-10 ResNet-56,
idapgraph defaults against Torch-Pruning (L2, matched FLOPs), the same distillation for both.

    python tools/distill_cifar.py [--targets 0.5,0.3] [--minutes 10] [--rows idap,tp,onnx]
                                  [--checkpoints 2,5] [--threads 2] [--holdout 10]

Images (the stored CIFAR-10 test set; no training set is shipped): the first 100 of every class
(1,000) are the unlabelled distillation set, the first 26 of every class among them (260)
calibrate ``compress``, the other 9,000 evaluate. Distillation: :func:`idapgraph.finetune.distill`
(KD loss at T=4 on the original's logits, SGD + Nesterov, lr 0.005 on a cosine over the time
budget, random crop + flip, batch 64), top-1 measured at each checkpoint of the one run (the
clock paused while evaluating). Row ``onnx``: the ONNX route end to end -- the original exported
to ONNX, compressed as ONNX, distilled by :func:`idapgraph.finetune.distill_onnx` (onnx2torch
conversion, Adam lr 3e-4, the same augmentation and budget) and exported back; its final top-1
is the returned ONNX model's, in onnxruntime. Row ``scores``: ``measure_groups=False`` (the channel
counts from the scores alone, the default before the thirteenth session), then the same
distillation. ``--holdout K``: the last K images of every class in the 1,000 are kept out of
training, and the state with the lowest distillation loss on them is returned. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar_resnet  # noqa: E402
from bench.common import flops  # noqa: E402
from bench.labelled import export  # noqa: E402
from bench.peers import torch_pruning  # noqa: E402
from cifar_accuracy import pad_shortcut_ignored  # noqa: E402

import idapgraph  # noqa: E402
from idapgraph.emit.validate import session  # noqa: E402
from idapgraph.finetune import distill, distill_onnx, flip_crop  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--checkpoints", default="2,5", help="minutes at which top-1 is measured")
    ap.add_argument("--rows", default="idap,tp", help="comma list of idap, scores, tp, onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bn", default="train", help="train or frozen (distill's bn=)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--holdout", type=int, default=0,
                    help="images per class of the 1,000 kept out of training: the state with "
                         "the lowest distillation loss on them is returned (distill's holdout=)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = cifar_resnet.balanced(1000)
    cal = cifar_resnet.balanced(260)
    held = [i for i in pool if i % 1000 >= 100 - args.holdout]  # the last of each class
    ev = sorted(set(range(10000)) - set(pool))
    assert set(cal) <= set(pool) and not set(pool) & set(ev) and not set(cal) & set(held)
    xd, _ = cifar_resnet.images(sorted(set(pool) - set(held)))
    xh = cifar_resnet.images(held)[0] if held else None
    xc, _ = cifar_resnet.images(cal)
    xe, ye = cifar_resnet.images(ev)
    model = cifar_resnet.pretrained(56)
    ex = (torch.from_numpy(xc[:1]),)
    base = flops(model, ex)

    def top1(m) -> float:
        if isinstance(m, torch.nn.Module):
            return 100 * cifar_resnet.accuracy(m, xe, ye)
        s = session(m, threads=args.threads)
        pred = s.run(None, {s.get_inputs()[0].name: xe})[0].argmax(1)
        return 100 * float((pred == ye).mean())

    marks = [float(v) * 60 for v in args.checkpoints.split(",") if v]
    print(f"distillation {len(xd)} images ({len(held)} more held out), calibration {len(xc)}, "
          f"evaluation {len(xe)}; "
          f"original top-1 {top1(model):.2f} %")
    print("| method | FLOPs kept | training-free | "
          + " | ".join(f"{m / 60:g} min" for m in marks) + f" | {args.minutes:g} min | steps |")
    print("|---|---|---|" + "---|" * (len(marks) + 2))
    proto = export(model, ex)  # the ONNX route's original: compressed and the teacher
    for target in (float(t) for t in args.targets.split(",")):
        for row in args.rows.split(","):
            small, name = _compress(row, model, ex, proto, xc, target)
            if small is None:
                print(f"| {name} @ {target} | failed | | |")
                continue
            on_torch = isinstance(small, torch.nn.Module)
            before, kept = top1(small), flops(small, ex if on_torch else None) / base
            budget = {"seconds": args.minutes * 60, "augment": flip_crop(), "evaluate": top1,
                      "checkpoints": marks}
            if row == "onnx":
                small, h = distill_onnx(small, proto, xd, holdout=xh, **budget)
                h.final = top1(small)  # the exported ONNX model's, in onnxruntime
            else:
                h = distill(small, model, xd, bn=args.bn, lr=args.lr, holdout=xh, **budget)
            if h.kept is not None:
                print(f"kept the state after {h.kept:.0f} s (held-out loss "
                      + ", ".join(f"{v:.4f}" for _, v in h.holdout) + ")")
            cps = " | ".join(f"{a:.2f}" for _, a in h.checkpoints)
            print(f"| {name} @ {target} | {kept:.3f} | {before:.2f} | {cps} | "
                  f"{h.final:.2f} | {h.steps} |", flush=True)


def _compress(row: str, model, ex, proto, xc, target: float):
    """(compressed model, row label) of one method; (None, label) when the peer fails."""
    t0 = time.time()
    if row == "idap":
        r = idapgraph.compress(copy.deepcopy(model), ex, flops=target, calib=xc)
        return r.model, f"idapgraph defaults ({time.time() - t0:.0f} s)"
    if row == "scores":
        r = idapgraph.compress(copy.deepcopy(model), ex, flops=target, calib=xc,
                               measure_groups=False)
        return r.model, f"idapgraph measure_groups=False ({time.time() - t0:.0f} s)"
    if row == "onnx":
        r = idapgraph.compress(proto, flops=target, calib=xc)
        return r.model, f"idapgraph defaults, ONNX in and out ({time.time() - t0:.0f} s)"
    p = torch_pruning(model, ex, target, "magnitude", ignored=pad_shortcut_ignored)
    return p.model, "Torch-Pruning L2" + (f" ({p.error})" if p.model is None else "")


if __name__ == "__main__":
    main()
