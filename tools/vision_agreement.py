"""Agreement of compressed detection and segmentation models with their originals on real
photographs (issue 26, point 5).

No labelled detection or segmentation data and no pretrained detector or segmenter weights are
available offline (``../shared/data`` holds the ImageNet sample, CIFAR-10, SST-2 and WikiText-2;
torchvision's weights would be downloaded), so accuracy on a real task cannot be measured here.
What is measured instead: torchvision's DeepLabV3 (MobileNetV3-Large) and Faster R-CNN
(MobileNetV3-Large 320 FPN) with random weights (seed 0), compressed to ``--flops`` with
calibration images and evaluated on other images of the ImageNet sample (even-numbered files
calibrate, odd-numbered files evaluate: the splits are disjoint), against the original's own
outputs. The random models' BatchNorm statistics are first measured on the calibration images
(else DeepLabV3's features fade to 1e-9 and every pixel gets one class):

- segmentation: pixel agreement of the per-pixel class (argmax of ``out``), the mean IoU of the
  compressed model's masks against the original's (classes present in either, per image), and
  the relative L2 error of the logits;
- detection (``box_score_thresh=0``, so every image has 100 detections): the share of the
  original's top ``--top`` detections per image that the compressed model reproduces (a
  compressed detection of the same label with IoU >= 0.5, each used once), and the same without
  the label.

Rows: idapgraph's methods on the torch route (the detector by its parts), the default method on
the ONNX route (the TorchScript export), and Torch-Pruning 1.6 (magnitude, L2, uniform ratio
bisected to the same FLOPs; the classifier convs ignored) for DeepLabV3 (it breaks Faster
R-CNN: the coverage sweep's RPN-head crash).

    python3 tools/vision_agreement.py [--models deeplab,frcnn] [--flops 0.5] [--calib 32]
        [--eval 64] [--methods idap,magnitude,random] [--threads 2] [--size 320]
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import idapgraph  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def images(n_calib: int, n_eval: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, size, size] in [0, 1]: centre crops of the sample's even (calibration) and odd
    (evaluation) files in sorted order."""
    from torchvision.io import read_image, ImageReadMode
    from torchvision.transforms.v2 import functional as F

    files = sorted(p for p in DATA.glob("*.jpg"))

    def load(paths):
        out = []
        for p in paths:
            img = read_image(str(p), mode=ImageReadMode.RGB)
            img = F.center_crop(F.resize(img, [size], antialias=True), [size, size])
            out.append(img.float() / 255)
        return torch.stack(out)

    return load(files[0::2][:n_calib]), load(files[1::2][:n_eval])


class Task:
    """One model: how it is built, fed and compared."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        if self.name == "frcnn":
            return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
                weights=None, weights_backbone=None, min_size=self.size, max_size=self.size,
                box_score_thresh=0.0).eval()
        return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, aux_loss=True).eval()

    def settle(self, model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
        """BatchNorm statistics from images (the rest stays in eval mode): with torchvision's
        initialisation and unit running variances, DeepLabV3's backbone features fade to 1e-9
        and every pixel gets the same class -- a degenerate model that anything "agrees" with."""
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calls
            m.train()
        with torch.no_grad():
            for i in range(0, len(x), 8):  # batches: ASPP's pooled branch is 1x1 per image
                model(list(x[i:i + 8]) if self.name == "frcnn" else x[i:i + 8])
        for m in norms:
            m.eval()
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for images in [0, 1] (the detector normalises by itself)."""
        if self.name == "frcnn":
            return x
        return (x - MEAN[:, None, None]) / STD[:, None, None]

    def example(self, x: torch.Tensor) -> tuple:
        return ([x[0]],) if self.name == "frcnn" else (x[:1],)

    def run(self, model, x: torch.Tensor) -> list:
        """One output per image: the ``out`` logits or the detections dict."""
        outs = []
        with torch.no_grad():
            for img in x:
                if self.name == "frcnn":
                    outs.append(model([img])[0])
                else:
                    outs.append(model(img[None])["out"][0])
        return outs

    def onnx_run(self, proto: onnx.ModelProto, x: torch.Tensor) -> list:
        import onnxruntime as ort

        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        outs = []
        for img in x:
            feed = img if self.name == "frcnn" else img[None]
            got = sess.run(None, {name: feed.numpy()})
            if self.name == "frcnn":
                boxes, labels, scores = (torch.from_numpy(a) for a in got[:3])
                outs.append({"boxes": boxes, "labels": labels, "scores": scores})
            else:
                outs.append(torch.from_numpy(got[0][0]))
        return outs

    def export(self, model, x: torch.Tensor) -> onnx.ModelProto:
        f = io.BytesIO()
        args = self.example(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, f, dynamo=False, opset_version=17,
                              output_names=None if self.name == "frcnn" else ["out", "aux"])
        return onnx.load_from_string(f.getvalue())

    def calib_onnx(self, x: torch.Tensor) -> list:
        return [img.numpy() if self.name == "frcnn" else img[None].numpy() for img in x]


def seg_agreement(ref: list, got: list) -> dict:
    agree, ious, errs, classes = [], [], [], []
    for a, b in zip(ref, got):
        la, lb = a.argmax(0), b.argmax(0)
        agree.append((la == lb).float().mean().item())
        present = torch.unique(torch.cat([la.flatten(), lb.flatten()]))
        iou = [((la == c) & (lb == c)).sum().item() / ((la == c) | (lb == c)).sum().item()
               for c in present]
        ious.append(float(np.mean(iou)))
        errs.append(((a - b).norm() / a.norm()).item())
        classes.append(len(torch.unique(la)))
    return {"pixel agreement": np.mean(agree), "mIoU vs original": np.mean(ious),
            "logits rel. error": np.mean(errs), "classes per mask": np.mean(classes)}


def _recall(a: dict, b: dict, top: int, labels: bool) -> float:
    keep = a["scores"].argsort(descending=True)[:top]
    boxes, lab = a["boxes"][keep], a["labels"][keep]
    if len(boxes) == 0:
        return 1.0
    if len(b["boxes"]) == 0:
        return 0.0
    iou = torchvision.ops.box_iou(boxes, b["boxes"])
    if labels:
        iou = iou * (lab[:, None] == b["labels"][None, :])
    used, hit = set(), 0
    for i in range(len(boxes)):
        for j in iou[i].argsort(descending=True).tolist():
            if iou[i, j] < 0.5:
                break
            if j not in used:
                used.add(j)
                hit += 1
                break
    return hit / len(boxes)


def det_agreement(ref: list, got: list, top: int) -> dict:
    return {f"top-{top} boxes kept (label, IoU>=0.5)":
            np.mean([_recall(a, b, top, True) for a, b in zip(ref, got)]),
            "same, any label": np.mean([_recall(a, b, top, False) for a, b in zip(ref, got)]),
            "detections per image": np.mean([len(b["boxes"]) for b in got])}


def tp_deeplab(model, example: tuple, target: float):
    """Torch-Pruning: L2 magnitude, one uniform ratio bisected to ``target`` of the MACs."""
    import torch_pruning as tp

    base = tp.utils.count_ops_and_params(model, example)[0]
    lo, hi, best = 0.0, 0.9, None
    for _ in range(8):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        ignored = [m.classifier[-1], m.aux_classifier[-1]]
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=mid, ignored_layers=ignored)
        with torch.no_grad():
            pruner.step()
        kept = tp.utils.count_ops_and_params(m.eval(), example)[0] / base
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (m, kept)
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best


def rows(task: Task, args) -> None:
    calib, evals = images(args.calib, args.eval, task.size)
    calib, evals = task.inputs(calib), task.inputs(evals)
    model = task.settle(task.build(), calib)
    ref = task.run(model, evals)
    score = ((lambda got: seg_agreement(ref, got)) if task.name == "deeplab"
             else (lambda got: det_agreement(ref, got, args.top)))
    example = task.example(calib)

    def show(route, method, kept, sec, got):
        vals = score(got)
        if not shown:  # one table per model: its metrics as columns
            print(f"\n| {task.name} | method | FLOPs kept | compress s | {' | '.join(vals)} |")
            print("|---|---|---:|---:|" + "---:|" * len(vals))
            shown.append(True)
        cells = " | ".join(f"{v:.3f}" for v in vals.values())
        print(f"| {route} | {method} | {kept:.3f} | {sec:.0f} | {cells} |", flush=True)

    shown: list = []

    for method in args.methods.split(","):
        t = time.perf_counter()
        r = idapgraph.compress(model, example, flops=args.flops, method=method, calib=calib)
        show(f"torch ({r.report.backend})", method, r.report.flops_ratio,
             time.perf_counter() - t, task.run(r.model, evals))
    proto = task.export(model, calib)
    t = time.perf_counter()
    r = idapgraph.compress(proto, flops=args.flops, calib=task.calib_onnx(calib))
    show("ONNX", "idap", r.report.flops_ratio, time.perf_counter() - t,
         task.onnx_run(r.model, evals))
    show("ONNX", "original (export)", 1.0, 0.0, task.onnx_run(proto, evals))
    if task.name == "deeplab":
        t = time.perf_counter()
        m, kept = tp_deeplab(model, example, args.flops)
        show("Torch-Pruning", "magnitude L2", kept, time.perf_counter() - t, task.run(m, evals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deeplab,frcnn")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--methods", default="idap,magnitude,random")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        rows(Task(name, args.size), args)


if __name__ == "__main__":
    main()
