"""Compare idapgraph's params/FLOPs against Torch-Pruning's counter on torchvision models.

Torch-Pruning's ``torch_pruning.utils.count_ops_and_params(model, x)`` returns
``(macs, params)``: MACs per example (1 MAC = 1 op; conv/linear bias add one per output
element, BatchNorm 2 per element, ReLU/ReLU6/PReLU/ELU/LeakyReLU/GELU modules 1 per output
element, pooling modules 1 per *input* element; functional ops such as ``x + identity``,
``F.relu``, ``torch.cat``, ``flatten`` and unlisted modules such as Hardswish, SiLU, Sigmoid,
Dropout, Identity count 0) and ``params = sum(p.numel() for p in model.parameters())``.

idapgraph is counted twice: the fx frontend (``idapgraph.analyze(model, (x,))``) and the ONNX
frontend on the TorchScript export (opset 17, eval mode).

Usage::

    python3 tools/count_vs_tp.py [--check] [--models resnet18,...] [--out table.md]

``--check`` exits 1 if any |diff| > 2 % (params, or FLOPs against both Torch-Pruning's and
torchvision's published count -- the weights' ``meta["_ops"]`` -- either frontend).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings

import onnx
import torch
import torchvision

MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "densenet121", "convnext_tiny", "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1",
    "vgg11_bn", "inception_v3",
    # beyond classifiers: segmentation (dict outputs), video (3-D convs), a detector's
    # backbone + FPN (five outputs); sizes are each family's usual input
    "segmentation.deeplabv3_mobilenet_v3_large", "segmentation.lraspp_mobilenet_v3_large",
    "segmentation.fcn_resnet50", "video.r3d_18", "video.mc3_18", "video.r2plus1d_18",
    "detection.fasterrcnn_mobilenet_v3_large_320_fpn.backbone",
]
TOL = 2.0  # percent


def build(name: str):
    family, _, arch = name.partition(".") if "." in name else ("", "", name)
    if family == "segmentation":
        kw = {} if arch.startswith("lraspp") else {"aux_loss": True}  # as the published weights
        model = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None,
                                                               **kw)
        return model.eval(), torch.randn(1, 3, 520, 520)
    if family == "video":
        model = getattr(torchvision.models.video, arch)(weights=None)
        return model.eval(), torch.randn(1, 3, 16, 112, 112)
    if family == "detection":
        arch, _, part = arch.partition(".")
        model = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None)
        return getattr(model, part).eval(), torch.randn(1, 3, 320, 320)
    kw = {"weights": None}
    size = 224
    if name == "inception_v3":
        kw.update(aux_logits=False, init_weights=False)
        size = 299
    model = getattr(torchvision.models, name)(**kw).eval()
    return model, torch.randn(1, 3, size, size)


def export(model, x) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def pct(ours, ref) -> float:
    return 100.0 * (ours - ref) / ref


def published(name: str) -> float | None:
    """torchvision's own count for the model (weights meta ``_ops``, GFLOPs at the weights'
    input size, which is the size ``build`` uses), or None (no weights, or a submodule)."""
    if name.startswith("detection."):
        return None
    arch = name.rpartition(".")[2]
    try:
        weights = list(torchvision.models.get_model_weights(arch))
    except (KeyError, ValueError):
        return None
    ops = weights[0].meta.get("_ops") if weights else None
    return None if ops is None else ops * 1e9


def measure(name: str) -> dict:
    import torch_pruning as tp

    import idapgraph

    model, x = build(name)
    with torch.no_grad():
        tp_macs, tp_params = tp.utils.count_ops_and_params(model, x)
    fx = idapgraph.analyze(model, (x,)).cost
    on = idapgraph.analyze(export(model, x)).cost
    return {
        "model": name,
        "tp_macs": int(tp_macs), "fx_flops": int(fx.flops), "onnx_flops": int(on.flops),
        "tp_params": int(tp_params), "fx_params": int(fx.params), "onnx_params": int(on.params),
        "tv_flops": published(name),
    }


def fmt_m(v: int) -> str:
    return f"{v / 1e6:,.2f}M"


def table(rows: list[dict]) -> str:
    out = [
        "| model | TP MACs | ours fx FLOPs | ours onnx FLOPs | diff % (fx / onnx) "
        "| torchvision's count, diff % (fx / onnx) "
        "| TP params | ours params (fx / onnx) | diff % (fx / onnx) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | ERROR: {r['error']} | | | | | | | |")
            continue
        tv = r["tv_flops"]
        ref = "-" if tv is None else (
            f"{fmt_m(tv)}, {pct(r['fx_flops'], tv):+.2f} / {pct(r['onnx_flops'], tv):+.2f}")
        out.append(
            f"| {r['model']} | {fmt_m(r['tp_macs'])} | {fmt_m(r['fx_flops'])} "
            f"| {fmt_m(r['onnx_flops'])} "
            f"| {pct(r['fx_flops'], r['tp_macs']):+.2f} / {pct(r['onnx_flops'], r['tp_macs']):+.2f} "
            f"| {ref} "
            f"| {fmt_m(r['tp_params'])} | {fmt_m(r['fx_params'])} / {fmt_m(r['onnx_params'])} "
            f"| {pct(r['fx_params'], r['tp_params']):+.2f} / "
            f"{pct(r['onnx_params'], r['tp_params']):+.2f} |"
        )
    return "\n".join(out)


def worst(r: dict) -> float:
    """The largest difference; a FLOPs count may match either Torch-Pruning's or torchvision's
    published one (Torch-Pruning's counter has no rule for Conv3d, so it undercounts video
    models 26x)."""
    if "error" in r:
        return float("inf")
    refs = [r["tp_macs"]] + ([r["tv_flops"]] if r["tv_flops"] else [])
    flops = max(min(abs(pct(r[k], ref)) for ref in refs) for k in ("fx_flops", "onnx_flops"))
    return max(flops, abs(pct(r["fx_params"], r["tp_params"])),
               abs(pct(r["onnx_params"], r["tp_params"])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"exit 1 if any |diff| > {TOL} %%")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated torchvision names; segmentation.<arch>, video.<arch>, "
                    "detection.<arch>.<submodule> for the other families")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    rows = []
    for name in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        try:
            rows.append(measure(name))
        except Exception as e:  # report, don't abort the whole table
            rows.append({"model": name, "error": f"{type(e).__name__}: {str(e)[:120]}"})
        print(f"[{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr)

    text = table(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    bad = [r["model"] for r in rows if worst(r) > TOL]
    if bad:
        print(f"\n> over {TOL} %: {', '.join(bad)}", file=sys.stderr)
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
