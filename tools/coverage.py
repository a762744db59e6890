"""Coverage sweep: idapgraph (fx and ONNX routes) beside Torch-Pruning on a broad set of
architectures, printed as a markdown table.

Every model is built in code with **random weights** (seed 0; nothing is downloaded) and run
on a small input: timm hierarchical/hybrid vision transformers and CNNs (64-96 px where the
model allows it, ``img_size=`` where it takes one), tiny transformers configs (hidden 128,
2 layers, 4 heads; 16-token sequences, 0.5 s of 16 kHz audio for wav2vec2, 1 s of 80-bin
log-mel frames for Whisper's encoder), torchvision segmentation (64x64), video (1x3x4x32x32)
and detection (128 px, few proposals; called with a list of one image).

What is measured, per model (each call in its own subprocess with a timeout, so a hang or a
crash costs one cell, not the sweep):

* **idapgraph fx**: ``idapgraph.compress(model, args, flops=0.5, method="magnitude",
  heal="none")`` on the torch module. Status ``ok`` / ``refused`` (an
  ``idapgraph.errors.InputError``: a clear refusal) / ``INTERNAL`` (any other exception) /
  ``BAD-OUTPUT`` (the compressed model does not run on the example inputs, or its output
  structure or shapes differ from the original's; detectors: dict keys and tensor ranks only) /
  ``timeout`` / ``crash``. Also the whole-model FLOPs kept (``report.flops_ratio``),
  ``report.reached``, ``report.backend`` (``fx`` or ``fx-parts``), the number of frozen
  entries and the wall seconds of the compress call.
* **idapgraph ONNX**: ``torch.onnx.export(model, args, path, dynamo=False, opset_version=17)``
  (``export failed`` when it raises), then ``idapgraph.compress(path, flops=0.5,
  method="magnitude", heal="none")``; the result must pass ``onnx.checker.check_model(...,
  full_check=True)`` and run in onnxruntime on the example inputs with the same output
  shapes as the exported original (detectors: ranks).
* **Torch-Pruning 1.6**: ``tp.pruner.MetaPruner(model, args,
  importance=MagnitudeImportance(p=2), pruning_ratio=r, global_pruning=False,
  ignored_layers=<the model's output layers>)``, ``r`` bisected (at most 7 tries) so that the
  MACs of ``tp.utils.count_ops_and_params`` are about 0.5 of the original's (``r=0.3`` when
  the bisection fails); then whether the pruned model runs and keeps the original's output
  shapes (``output shapes changed`` otherwise). The seconds shown are one prune at the chosen
  ratio (the bisection's total is in the log).

Usage (from the repository root)::

    TQDM_DISABLE=1 .venv/bin/python tools/coverage.py [--models a,b,c] [--out table.md]
        [--jsonl results.jsonl] [--timeout 300] [--routes fx,onnx,tp]
    .venv/bin/python tools/coverage.py --list

The table (with the command and the machine at the top) goes to ``--out`` (default stdout);
progress, failing tracebacks and each worker's JSON go to stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.5

# ---------------------------------------------------------------------------------- models
# name -> (family, timm architecture / builder key, image size, timm kwargs)
TIMM = {
    # hierarchical / hybrid vision transformers
    "pvt_v2_b0": ("timm hier-ViT", 64, {}),
    "twins_svt_small": ("timm hier-ViT", 64, {}),
    "swin_tiny_patch4_window7_224": ("timm hier-ViT", 96, {"img_size": 96, "window_size": 3}),
    "levit_128s": ("timm hybrid ViT", 96, {"img_size": 96}),
    "coat_lite_tiny": ("timm hybrid ViT", 64, {"img_size": 64}),
    "mobilevit_xxs": ("timm hybrid ViT", 64, {}),
    "efficientformer_l1": ("timm hybrid ViT", 224, {}),  # attention biases fixed at 224
    "efficientformerv2_s0": ("timm hybrid ViT", 96, {"img_size": 96}),
    "fastvit_t8": ("timm hybrid ViT", 64, {}),
    "efficientvit_b0": ("timm hybrid ViT", 64, {}),
    "efficientvit_m0": ("timm hybrid ViT", 96, {"img_size": 96}),
    "tiny_vit_5m_224": ("timm hybrid ViT", 96, {"num_classes": 1000}),
    "edgenext_xx_small": ("timm hybrid ViT", 64, {}),
    "deit_tiny_patch16_224": ("timm ViT", 64, {"img_size": 64}),
    # CNNs
    "convnext_atto": ("timm CNN", 64, {}),
    "repvgg_a0": ("timm CNN", 64, {}),
    "cspresnet50": ("timm CNN", 64, {}),
    "cspdarknet53": ("timm CNN", 64, {}),
    "ghostnet_100": ("timm CNN", 64, {}),
    "regnetx_002": ("timm CNN", 64, {}),
    "mobileone_s0": ("timm CNN", 64, {}),
    "hgnetv2_b0": ("timm CNN", 64, {}),
}
HF = {
    "bert": "HF encoder", "distilbert": "HF encoder", "gpt2": "HF decoder",
    "llama_gqa": "HF decoder", "t5": "HF enc-dec", "bart": "HF enc-dec",
    "wav2vec2": "HF audio", "whisper_encoder": "HF audio",
}
SEG = ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18"]
DET = ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
       "retinanet_resnet50_fpn"]


def model_names() -> list[str]:
    return ([f"timm:{n}" for n in TIMM] + [f"hf:{n}" for n in HF] + [f"seg:{n}" for n in SEG]
            + [f"video:{n}" for n in VIDEO] + [f"det:{n}" for n in DET])


def family(name: str) -> str:
    kind, _, arch = name.partition(":")
    if kind == "timm":
        return TIMM[arch][0]
    if kind == "hf":
        return HF[arch]
    return {"seg": "tv segmentation", "video": "tv video", "det": "tv detection"}[kind]


def _wrappers():
    """The plain-tensor interfaces around transformers models, shared with the test zoo."""
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo import AudioWrapper, LogitsWrapper, Seq2Seq, _HFWrapper

    return _HFWrapper, LogitsWrapper, Seq2Seq, AudioWrapper


def build(name: str):
    """(model in eval mode, example args tuple, is_detector, tp_ignored(model) -> modules)."""
    import torch

    torch.manual_seed(0)
    kind, _, arch = name.partition(":")
    g = torch.Generator().manual_seed(0)
    if kind == "timm":
        import timm

        _, size, kw = TIMM[arch]
        m = timm.create_model(arch, pretrained=False, **kw)
        x = (torch.randn(1, 3, size, size, generator=g),)

        def ignored(mm):
            names = mm.pretrained_cfg.get("classifier") or ()
            names = (names,) if isinstance(names, str) else tuple(names)
            out = []
            for n in names:
                try:
                    out.append(mm.get_submodule(n))
                except AttributeError:
                    pass
            if not out:  # fall back to the last Linear
                lin = [s for s in mm.modules() if isinstance(s, torch.nn.Linear)]
                out = lin[-1:]
            return out
        return m.eval(), x, False, ignored
    if kind == "hf":
        import transformers as tf

        Hidden, Logits, Seq2Seq, Audio = _wrappers()
        ids = torch.randint(0, 1000, (1, 16), generator=g)
        mask = torch.ones(1, 16, dtype=torch.int64)
        if arch == "bert":
            cfg = tf.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256, vocab_size=1000)
            m, x = Hidden(tf.BertModel(cfg)), (ids, mask)
            ign = lambda mm: [mm.model.encoder.layer[-1].output.LayerNorm]  # noqa: E731
        elif arch == "distilbert":
            cfg = tf.DistilBertConfig(dim=128, n_layers=2, n_heads=4, hidden_dim=256,
                                      vocab_size=1000)
            m, x = Hidden(tf.DistilBertModel(cfg)), (ids, mask)
            ign = lambda mm: [mm.model.transformer.layer[-1].output_layer_norm]  # noqa: E731
        elif arch == "gpt2":
            cfg = tf.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=1000, use_cache=False)
            m, x = Hidden(tf.GPT2Model(cfg)), (ids, mask)
            ign = lambda mm: [mm.model.ln_f]  # noqa: E731
        elif arch == "llama_gqa":  # 4 query heads on 2 key/value heads
            cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
                                 max_position_embeddings=64)
            m, x = Logits(tf.LlamaForCausalLM(cfg)), (ids,)
            ign = lambda mm: [mm.model.lm_head]  # noqa: E731
        elif arch == "t5":
            cfg = tf.T5Config(d_model=128, d_ff=256, d_kv=32, num_layers=2, num_decoder_layers=2,
                              num_heads=4, vocab_size=1000)
            dec = torch.randint(0, 1000, (1, 8), generator=g)
            m, x = Seq2Seq(tf.T5Model(cfg)), (ids, dec)
            ign = lambda mm: [mm.model.decoder.final_layer_norm]  # noqa: E731
        elif arch == "bart":
            cfg = tf.BartConfig(d_model=128, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=4, decoder_attention_heads=4,
                                encoder_ffn_dim=256, decoder_ffn_dim=256, vocab_size=1000,
                                max_position_embeddings=64)
            dec = torch.randint(0, 1000, (1, 8), generator=g)
            m, x = Seq2Seq(tf.BartModel(cfg)), (ids, dec)
            ign = lambda mm: [mm.model.decoder.layers[-1].final_layer_norm]  # noqa: E731
        elif arch == "wav2vec2":
            cfg = tf.Wav2Vec2Config(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=256, conv_dim=(64,) * 7,
                                    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
            m, x = Audio(tf.Wav2Vec2Model(cfg)), (torch.randn(1, 8000, generator=g),)
            ign = lambda mm: [mm.model.encoder.layers[-1].final_layer_norm]  # noqa: E731
        elif arch == "whisper_encoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            cfg = tf.WhisperConfig(d_model=128, encoder_layers=2, decoder_layers=2,
                                   encoder_attention_heads=4, decoder_attention_heads=4,
                                   encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=80,
                                   max_source_positions=50, vocab_size=1000)
            m, x = Audio(WhisperEncoder(cfg)), (torch.randn(1, 80, 100, generator=g),)
            ign = lambda mm: [mm.model.layer_norm]  # noqa: E731
        else:
            raise KeyError(name)
        return m.eval(), x, False, ign
    if kind == "seg":
        from torchvision.models import segmentation

        kw = {"aux_loss": True} if arch != "lraspp_mobilenet_v3_large" else {}
        m = getattr(segmentation, arch)(weights=None, weights_backbone=None, **kw)
        x = (torch.randn(1, 3, 64, 64, generator=g),)
        if arch == "lraspp_mobilenet_v3_large":
            ign = lambda mm: [mm.classifier.low_classifier, mm.classifier.high_classifier]  # noqa
        else:
            ign = lambda mm: [mm.classifier[-1], mm.aux_classifier[-1]]  # noqa: E731
        return m.eval(), x, False, ign
    if kind == "video":
        from torchvision.models import video

        m = getattr(video, arch)(weights=None)
        return m.eval(), (torch.randn(1, 3, 4, 32, 32, generator=g),), False, lambda mm: [mm.fc]
    if kind == "det":
        from torchvision.models import detection

        img = torch.rand(3, 128, 128, generator=g)
        if arch == "fasterrcnn_mobilenet_v3_large_320_fpn":
            m = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
                weights=None, weights_backbone=None, min_size=128, max_size=128,
                rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10)
            ign = lambda mm: [mm.roi_heads.box_predictor.cls_score,  # noqa: E731
                              mm.roi_heads.box_predictor.bbox_pred,
                              mm.rpn.head.cls_logits, mm.rpn.head.bbox_pred]
        elif arch == "ssdlite320_mobilenet_v3_large":  # its transform resizes to 320x320
            m = detection.ssdlite320_mobilenet_v3_large(
                weights=None, weights_backbone=None, detections_per_img=10, topk_candidates=50)
            ign = lambda mm: ([s[-1] for s in mm.head.classification_head.module_list]  # noqa
                              + [s[-1] for s in mm.head.regression_head.module_list])
        elif arch == "retinanet_resnet50_fpn":
            m = detection.retinanet_resnet50_fpn(
                weights=None, weights_backbone=None, min_size=128, max_size=128,
                detections_per_img=10, topk_candidates=50)
            ign = lambda mm: [mm.head.classification_head.cls_logits,  # noqa: E731
                              mm.head.regression_head.bbox_reg]
        else:
            raise KeyError(name)
        return m.eval(), ([img],), True, ign
    raise KeyError(name)


# ------------------------------------------------------------------------------ checks
def signature(out, loose: bool):
    """Output structure: tensors as their shape (``loose``: their rank), containers kept."""
    import numpy as np
    import torch

    if isinstance(out, torch.Tensor):
        return f"rank{out.dim()}" if loose else list(out.shape)
    if isinstance(out, np.ndarray):
        return f"rank{out.ndim}" if loose else list(out.shape)
    if isinstance(out, dict):
        return {str(k): signature(v, loose) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [signature(v, loose) for v in out]
    return type(out).__name__


def finite(out) -> bool:
    import numpy as np
    import torch

    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, np.ndarray):
        return out.dtype.kind != "f" or bool(np.isfinite(out).all())
    if isinstance(out, dict):
        return all(finite(v) for v in out.values())
    if isinstance(out, (list, tuple)):
        return all(finite(v) for v in out)
    return True


def flat_tensors(args) -> list:
    import torch

    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(flat_tensors(a))
    return out


def short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:100]}"


def tb_head(n: int = 12) -> list[str]:
    """The exception's last frames (the innermost lines are the informative ones), and those of
    its cause (``raise ... from e``: e.g. the fx line a rewritten module fails at)."""
    lines = traceback.format_exc().rstrip().splitlines()[-n:]
    cause = sys.exc_info()[1].__cause__ if sys.exc_info()[1] is not None else None
    if cause is not None:
        msg = [ln for ln in str(cause).splitlines() if ln.strip() and not ln.startswith("~")]
        lines += ["caused by:"] + traceback.format_exception(cause)[-2:-1][0].rstrip(
        ).splitlines()[-3:] + msg[-6:]
    return lines


def classify(e: BaseException) -> str:
    from idapgraph.errors import InputError

    return "refused" if isinstance(e, InputError) else "INTERNAL"


def compared(r: dict, ref, out, det: bool) -> dict:
    """``r`` marked BAD-OUTPUT where ``out`` differs from ``ref`` in structure/shapes or turns
    non-finite."""
    a, b = signature(ref, det), signature(out, det)
    if a != b:
        r.update(status="BAD-OUTPUT", error=f"output structure/shapes changed: {str(a)[:150]} "
                 f"-> {str(b)[:150]}")
    elif finite(ref) and not finite(out):
        r.update(status="BAD-OUTPUT", error="non-finite outputs")
    return r


# ------------------------------------------------------------------------------ routes
def route_fx(name: str) -> dict:
    import torch

    import idapgraph

    model, args, det, _ = build(name)
    with torch.no_grad():
        ref = model(*copy.deepcopy(args))
    t = time.perf_counter()
    try:
        res = idapgraph.compress(model, args, flops=TARGET, method="magnitude", heal="none")
    except Exception as e:  # noqa: BLE001 - a failure is a result
        return {"status": classify(e), "error": short(e), "tb": tb_head(),
                "s": time.perf_counter() - t}
    wall = time.perf_counter() - t
    rep = res.report
    r = {"status": "ok", "flops_kept": rep.flops_ratio, "reached": rep.reached,
         "backend": rep.backend, "frozen": len(rep.frozen), "s": wall,
         "groups": rep.groups, "groups_pruned": rep.groups_pruned,
         "params_kept": rep.params_ratio, "type": type(res.model).__name__}
    try:
        with torch.no_grad():
            out = res.model(*copy.deepcopy(args))
    except Exception as e:  # noqa: BLE001
        r.update(status="BAD-OUTPUT", error="compressed model fails to run: " + short(e),
                 tb=tb_head())
        return r
    return compared(r, ref, out, det)


def _ort_run(model_or_path, args):
    import onnxruntime as ort

    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    feeds_all = {f"in{i}": t.numpy() for i, t in enumerate(flat_tensors(args))}
    feeds = {i.name: feeds_all[i.name] for i in sess.get_inputs()}
    return sess.run(None, feeds)


def route_onnx(name: str) -> dict:
    import warnings

    import onnx
    import torch

    import idapgraph

    model, args, det, _ = build(name)
    tmp = tempfile.mkdtemp(prefix="cov_")
    path = os.path.join(tmp, "model.onnx")
    n_in = len(flat_tensors(args))
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, dynamo=False, opset_version=17,
                              input_names=[f"in{i}" for i in range(n_in)])
    except Exception as e:  # noqa: BLE001
        return {"status": "export failed", "error": short(e), "tb": tb_head(6)}
    export_s = time.perf_counter() - t
    try:
        ref = _ort_run(path, args)
    except Exception as e:  # noqa: BLE001
        return {"status": "export failed", "error": "onnxruntime rejects the export: " + short(e)}
    t = time.perf_counter()
    try:
        res = idapgraph.compress(path, flops=TARGET, method="magnitude", heal="none")
    except Exception as e:  # noqa: BLE001
        return {"status": classify(e), "error": short(e), "tb": tb_head(),
                "s": time.perf_counter() - t, "export_s": export_s}
    wall = time.perf_counter() - t
    rep = res.report
    r = {"status": "ok", "flops_kept": rep.flops_ratio, "reached": rep.reached,
         "backend": rep.backend, "frozen": len(rep.frozen), "s": wall, "export_s": export_s,
         "groups": rep.groups, "groups_pruned": rep.groups_pruned,
         "params_kept": rep.params_ratio}
    try:
        onnx.checker.check_model(res.model, full_check=True)
    except Exception as e:  # noqa: BLE001
        r.update(status="BAD-OUTPUT", error="onnx checker: " + short(e), tb=tb_head())
        return r
    try:
        out = _ort_run(res.model, args)
    except Exception as e:  # noqa: BLE001
        r.update(status="BAD-OUTPUT", error="onnxruntime: " + short(e), tb=tb_head())
        return r
    return compared(r, ref, out, det)


def route_tp(name: str) -> dict:
    import torch
    import torch_pruning as tp

    model, args, det, ignored = build(name)
    with torch.no_grad():
        ref = model(*copy.deepcopy(args))
        base = tp.utils.count_ops_and_params(model, args)[0]

    def prune(ratio: float):
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, args, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, global_pruning=False,
                                      ignored_layers=ignored(m))
        with torch.no_grad():
            pruner.step()
        m.eval()
        with torch.no_grad():
            macs = tp.utils.count_ops_and_params(m, args)[0]
        return m, macs / base

    t0 = time.perf_counter()
    lo, hi, best, tries, how, err = 0.0, 0.9, None, [], "bisect", None
    for _ in range(7):
        mid = (lo + hi) / 2
        t = time.perf_counter()
        try:
            m, kept = prune(mid)
        except Exception as e:  # noqa: BLE001
            err, tb = e, tb_head()
            break
        step_s = time.perf_counter() - t
        tries.append((round(mid, 4), round(kept, 4)))
        if best is None or abs(kept - TARGET) < abs(best[1] - TARGET):
            best = (m, kept, mid, step_s)
        if abs(kept - TARGET) < 0.01:
            break
        lo, hi = (mid, hi) if kept > TARGET else (lo, mid)
    if best is None or abs(best[1] - TARGET) > 0.1:  # the bisection failed: plain r=0.3
        how = "r=0.3"
        t = time.perf_counter()
        try:
            m, kept = prune(0.3)
            best = (m, kept, 0.3, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001
            if best is None:
                return {"status": "error", "error": short(e), "tb": tb_head(),
                        "s": time.perf_counter() - t0, "tries": tries,
                        "bisect_error": short(err) if err else None}
            how = "bisect (r=0.3 failed)"
    m, kept, ratio, step_s = best
    r = {"status": "ok", "macs_kept": kept, "ratio": ratio, "how": how, "s": step_s,
         "search_s": time.perf_counter() - t0, "tries": tries,
         "bisect_error": short(err) if err else None}
    try:
        with torch.no_grad():
            out = m(*copy.deepcopy(args))
    except Exception as e:  # noqa: BLE001
        r.update(status="fails to run", error=short(e), tb=tb_head(6))
        return r
    a, b = signature(ref, det), signature(out, det)
    if a != b:
        r.update(status="output shapes changed", error=f"{str(a)[:150]} -> {str(b)[:150]}")
    elif finite(ref) and not finite(out):
        r.update(status="non-finite outputs")
    if det:  # the FPN's output widths, which TP is known to prune silently
        try:
            fpn = getattr(getattr(m, "backbone", None), "fpn", None)
            fpn0 = getattr(getattr(model, "backbone", None), "fpn", None)
            if fpn is not None:
                w = [c[0].out_channels if isinstance(c, torch.nn.Sequential) else c.out_channels
                     for c in fpn.layer_blocks]
                w0 = [c[0].out_channels if isinstance(c, torch.nn.Sequential) else c.out_channels
                      for c in fpn0.layer_blocks]
                r["fpn_out"] = f"{w0} -> {w}"
                if w != w0 and r["status"] == "ok":
                    r.update(status="output shapes changed",
                             error=f"FPN output widths {w0} -> {w}")
        except Exception:  # noqa: BLE001
            pass
    return r


ROUTES = {"fx": route_fx, "onnx": route_onnx, "tp": route_tp}


def worker(name: str, route: str) -> None:
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    try:
        r = ROUTES[route](name)
    except Exception as e:  # noqa: BLE001 - building the model failed, say so
        r = {"status": "build failed", "error": short(e), "tb": tb_head()}
    r["total_s"] = time.perf_counter() - t
    print("@@RESULT " + json.dumps(r, default=str), flush=True)


# ------------------------------------------------------------------------------- driver
def run_one(name: str, route: str, timeout: int) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--route", route]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=env)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"")
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        return {"status": "timeout", "error": f"no result within {timeout} s",
                "s": time.perf_counter() - t, "stderr_tail": err.splitlines()[-5:]}
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT "):
            r = json.loads(line[len("@@RESULT "):])
            if r.get("status") not in ("ok",):
                r["stderr_tail"] = p.stderr.strip().splitlines()[-8:]
            return r
    return {"status": "crash", "error": f"exit code {p.returncode}, no result",
            "s": time.perf_counter() - t, "stderr_tail": p.stderr.strip().splitlines()[-15:]}


def _pct(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def cell_idap(r: dict | None) -> str:
    if r is None:
        return "not run"
    st = r["status"]
    if st == "ok":
        extra = "" if r.get("reached", True) else ", not reached"
        be = f", {r['backend']}" if r.get("backend") not in (None, "fx", "onnx") else ""
        return f"ok {_pct(r['flops_kept'])}{extra}{be}, {r['s']:.1f} s, {r['frozen']} frozen"
    if st in ("timeout", "crash"):
        return f"**{st.upper()}** ({r.get('error', '')})"
    kept = f" {_pct(r['flops_kept'])}" if r.get("flops_kept") is not None else ""
    if st in ("INTERNAL", "BAD-OUTPUT"):
        return f"**{st}**{kept}: {_md(r.get('error', ''))[:90]}"
    return f"{st}: {_md(r.get('error', ''))[:90]}"


def cell_tp(r: dict | None) -> str:
    if r is None:
        return "not run"
    st = r["status"]
    if st in ("timeout", "crash", "error", "build failed"):
        return f"{st}: {_md(r.get('error', ''))[:90]}"
    how = "" if r.get("how") == "bisect" else f" ({r.get('how')})"
    outs = "outputs ok" if st == "ok" else st
    return f"{_pct(r['macs_kept'])}{how}, {outs}, {r['s']:.1f} s"


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], header: str) -> str:
    out = [header, "",
           "| model | family | idapgraph fx (status, FLOPs kept, s) | idapgraph ONNX (status, "
           "FLOPs kept, s) | Torch-Pruning (MACs kept, outputs, s) |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['family']} | {cell_idap(r.get('fx'))} | "
                   f"{cell_idap(r.get('onnx'))} | {cell_tp(r.get('tp'))} |")

    def count(route, pred):
        return sum(1 for r in rows if r.get(route) is not None and pred(r[route]))

    n = len(rows)
    ok = lambda r: r["status"] == "ok"  # noqa: E731
    internal = lambda r: r["status"] in ("INTERNAL", "crash", "timeout")  # noqa: E731
    bad = lambda r: r["status"] == "BAD-OUTPUT"  # noqa: E731
    refused = lambda r: r["status"] == "refused"  # noqa: E731
    reached = lambda r: r["status"] == "ok" and r.get("reached")  # noqa: E731
    out += ["", f"**Totals over {n} models**", "",
            "| | idapgraph fx | idapgraph ONNX | Torch-Pruning |", "|---|---|---|---|",
            f"| valid (ran, outputs ok) | {count('fx', ok)} | {count('onnx', ok)} | "
            f"{count('tp', ok)} |",
            f"| ... and FLOPs target reached | {count('fx', reached)} | "
            f"{count('onnx', reached)} | {count('tp', lambda r: ok(r) and r['macs_kept'] <= 0.55)}"
            " (MACs <= 0.55) |",
            f"| clear refusal (InputError) | {count('fx', refused)} | {count('onnx', refused)} "
            "| - |",
            f"| error (idapgraph: internal, not InputError) / crash / timeout | {count('fx', internal)} | "
            f"{count('onnx', internal)} | "
            f"{count('tp', lambda r: r['status'] in ('error', 'crash', 'timeout'))} |",
            f"| invalid output (runs wrong / shapes changed) | {count('fx', bad)} | "
            f"{count('onnx', bad)} | "
            f"{count('tp', lambda r: r['status'] in ('fails to run', 'output shapes changed', 'non-finite outputs'))} |",
            f"| export failed | - | {count('onnx', lambda r: r['status'] == 'export failed')} "
            "| - |"]
    return "\n".join(out) + "\n"


def machine() -> str:
    try:
        name = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                              text=True).stdout.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        name = platform.processor()
    return f"{name}, {os.cpu_count()} cores visible, torch 1 thread per process"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated names (see --list); default all")
    ap.add_argument("--out", help="markdown table file (default: stdout)")
    ap.add_argument("--jsonl", help="raw results, one JSON line per model")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per call (default 300)")
    ap.add_argument("--routes", default="fx,onnx,tp")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--route", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.route)
        return
    names = model_names()
    if a.list:
        print("\n".join(names))
        return
    if a.models:
        want = [m.strip() for m in a.models.split(",") if m.strip()]
        unknown = [w for w in want if w not in names and not any(n.endswith(":" + w)
                                                                  for n in names)]
        if unknown:
            sys.exit(f"unknown models: {unknown} (see --list)")
        names = [n for n in names if n in want or n.split(":", 1)[1] in want]
    routes = a.routes.split(",")
    cmd = "TQDM_DISABLE=1 " + " ".join([os.path.relpath(sys.executable, ROOT)
                                         if sys.executable.startswith(str(ROOT)) else
                                         sys.executable] + sys.argv)
    header = (f"# idapgraph coverage sweep (random weights, FLOPs target {TARGET}, "
              f"method magnitude, heal none)\n\nCommand: `{cmd}`\n\nMachine: {machine()}\n\n"
              "Cells: idapgraph `ok <FLOPs kept>, <s>` (backend shown when not plain fx/onnx); "
              "**INTERNAL** = an exception other than InputError; **BAD-OUTPUT** = the result "
              "does not run or its output shapes differ (detectors: structure and ranks only); "
              "`refused` = InputError. Torch-Pruning: MACs kept (its own counter), whether the "
              "pruned model runs with the original output shapes, seconds of one prune at the "
              "bisected ratio.")
    rows = []
    t_all = time.perf_counter()
    for name in names:
        row = {"model": name.split(":", 1)[1], "family": family(name)}
        for route in routes:
            t = time.perf_counter()
            r = run_one(name, route, a.timeout)
            row[route] = r
            print(f"[{time.perf_counter() - t_all:6.0f}s] {name} {route}: {r['status']} "
                  f"({time.perf_counter() - t:.0f} s) {json.dumps(r, default=str)}", flush=True)
            for line in r.get("tb") or []:
                print("    | " + line, flush=True)
            if r.get("status") != "ok":
                for line in r.get("stderr_tail") or []:
                    print("    stderr| " + line[:300], flush=True)
        rows.append(row)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        if a.out:  # rewritten after every model, so a cut-short sweep still leaves a table
            Path(a.out).write_text(table(rows, header))
    print(f"sweep took {time.perf_counter() - t_all:.0f} s", flush=True)
    text = table(rows, header)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
