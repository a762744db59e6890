"""Top-1 of a pretrained CIFAR-10 ResNet (``--depth``, default 56) after training-free compression: the original,
idapgraph (defaults, and other options), and Torch-Pruning 1.6 (L2 MetaPruner, global ranking)
at matched FLOPs with and without BatchNorm re-estimation. Prints a Markdown table.

    python tools/cifar_accuracy.py [--eval 0:10000] [--calib balanced] [--targets 0.7,0.5]
                                   [--rows all] [--depth 56]

Rows: ``orig``, ``idap`` (defaults: with calibration data the channel counts are allocated by
measured group losses, in rounds), ``none``/``bn`` (heal modes), ``mag`` (magnitude scores),
``scores`` (``measure_groups=False``: the counts from the scores alone, the default before the
thirteenth session), ``tp`` (Torch-Pruning L2 with and without BN re-estimation).

Calibration (default ``balanced``): the first 26 images of every class (i*1000 .. i*1000+25,
260 images); evaluation: the rest of ``--eval`` (9,740 images by default), never a calibration
image. NB the stored test set is sorted by class (images 0..999 are all airplanes), so a
calibration range such as ``--calib 0:256`` holds one class (split A of BENCHMARKS.md:
``--calib 0:256 --eval 1000:10000``). FLOPs kept are idapgraph's count (1 MAC = 1 FLOP).
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
from bench.peers import torch_pruning  # noqa: E402

import idapgraph  # noqa: E402


def bn_reestimate(model, x_calib) -> torch.nn.Module:
    """Every BatchNorm's running statistics recomputed from ``x_calib`` (reset, momentum=None:
    a cumulative average, one forward pass in train mode), then eval mode."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x_calib), 64):
            model(x_calib[i:i + 64])
    return model.eval()


def pad_shortcut_ignored(model) -> list:
    """Layers Torch-Pruning must leave whole on option-A ResNets: every layer writing the
    residual stream (stem conv, each block's second conv) -- F.pad's fixed channel padding is
    not traced as a dependency, so pruning those breaks the shortcut adds -- and the classifier."""
    out = [model.conv1, model.linear]
    for stage in (model.layer1, model.layer2, model.layer3):
        out += [b.conv2 for b in stage]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", default="0:10000")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--rows", default="all",
                    help="comma list of: orig,idap,none,bn,mag,scores,tp or all")
    ap.add_argument("--depth", type=int, default=56, choices=(20, 32, 44, 56))
    ap.add_argument("--calib", default="balanced",
                    help="'balanced' (26 images of every class), 'balanced:N' (N images, as many "
                         "of every class), or lo:hi (NB: the test file is sorted by class, so "
                         "0:256 is 256 airplanes)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    lo, hi = (int(v) for v in args.eval.split(":"))
    if args.calib.startswith("balanced"):
        cal = cifar_resnet.balanced(int(args.calib.partition(":")[2] or 260))
        ev = sorted(set(range(lo, hi)) - set(cal))
    else:
        cal, ev = range(*(int(v) for v in args.calib.split(":"))), range(lo, hi)
    assert not set(cal) & set(ev), "evaluation images must not be calibration images"
    xc, _ = cifar_resnet.images(cal)
    xe, ye = cifar_resnet.images(ev)
    xc_t, ex = torch.from_numpy(xc), (torch.from_numpy(xc[:1]),)
    model = cifar_resnet.pretrained(args.depth)
    base = flops(model, ex)
    rows = set(args.rows.split(",")) if args.rows != "all" else {"orig", "idap", "none", "bn",
                                                                  "tp"}
    print("| method | split | FLOPs kept | top-1 % | calib output error (heal) | s |")
    print("|---|---|---|---|---|---|")
    split = f"{lo}..{hi - 1}" + (" minus calib" if args.calib.startswith("balanced") else "")
    print(f"calibration: {args.calib} ({len(xc)} images), evaluation {split} ({len(xe)})")

    def line(name, m, note="", t0=None):
        kept = flops(m, ex) / base
        acc = cifar_resnet.accuracy(m, xe, ye) * 100
        dt = f"{time.time() - t0:.0f}" if t0 else ""
        print(f"| {name} | {split} | {kept:.3f} | {acc:.2f} | {note} | {dt} |", flush=True)

    if "orig" in rows:
        line("original", model)
    for target in [float(t) for t in args.targets.split(",")]:
        variants = []
        if "idap" in rows:
            variants.append(("idapgraph defaults (idap, lsq)", {}))
        if "none" in rows:
            variants.append(("idapgraph heal=none", {"heal": "none"}))
        if "bn" in rows:
            variants.append(("idapgraph heal=bn", {"heal": "bn"}))
        if "mag" in rows:
            variants.append(("idapgraph method=magnitude", {"method": "magnitude"}))
        if "scores" in rows:
            variants.append(("idapgraph measure_groups=False", {"measure_groups": False}))
        for name, kw in variants:
            t0 = time.time()
            r = idapgraph.compress(copy.deepcopy(model), ex, flops=target, calib=xc, **kw)
            h = r.report.heal or {}
            note = (f"{h['error_before']:.3f} -> {h['error_after']:.3f}, "
                    f"{'kept' if h['kept'] else 'not kept'}") if h.get("error_after") else ""
            line(f"{name} @ {target}", r.model, note, t0)
            if kw.get("heal") == "none":
                line(f"{name} + torch BN re-est. @ {target}", bn_reestimate(r.model, xc_t))
        if "tp" in rows:
            t0 = time.time()
            p = torch_pruning(model, ex, target, "magnitude", ignored=pad_shortcut_ignored)
            if p.model is None:
                print(f"| Torch-Pruning L2 @ {target} | {split} | - | failed: {p.error} | | |")
                continue
            line(f"Torch-Pruning L2 (ratio {p.ratio:.3f}) @ {target}", p.model, "", t0)
            line(f"Torch-Pruning L2 + BN re-est. @ {target}", bn_reestimate(p.model, xc_t), "",
                 t0)


if __name__ == "__main__":
    main()
