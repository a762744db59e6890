"""Shared test utilities: export, run, compare."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch

from idapgraph.emit.validate import example_feeds, flatten_outputs, run_onnx


def export_onnx(model: torch.nn.Module, args: tuple, dynamo: bool = False, opset: int = 17,
                **kw) -> onnx.ModelProto:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, args, dynamo=True, verbose=False, **kw)
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, args, f, dynamo=False, opset_version=opset, **kw)
        return onnx.load_from_string(f.getvalue())


def export_tokens(model: torch.nn.Module, ids: torch.Tensor) -> onnx.ModelProto:
    """The dynamo ONNX export of a token model (``input_ids`` in) with a symbolic batch and
    sequence (exported on the example repeated twice: a batch of 1 would be specialised)."""
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, (torch.cat([ids, ids]),), dynamo=True,
                                 input_names=["input_ids"], verbose=False,
                                 dynamic_shapes={"input_ids": {0: b, 1: s}}).model_proto


class DecodeStep(torch.nn.Module):
    """One decode step of a transformers causal LM with its KV cache as plain tensors:
    ``input_ids`` and each layer's past keys and values in, the logits and the new keys and
    values out (what an ONNX export with a cache wants)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, past):
        import transformers as tf

        cache = tf.DynamicCache()
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in out.past_key_values.layers
                              for t in (layer.keys, layer.values)])


def export_decode_step(lm, ids: torch.Tensor) -> onnx.ModelProto:
    """The dynamo export of :class:`DecodeStep` for ``lm`` (inputs ``input_ids``, ``k0``,
    ``v0``, ``k1``, …; batch, sequence and past length symbolic)."""
    cfg = lm.config
    layers, heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    size = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past = [torch.randn(2, heads, 5, size) for _ in range(2 * layers)]
    names = ["input_ids"] + [f"{k}{i}" for i in range(layers) for k in ("k", "v")]
    b, s, p = (torch.export.Dim(n) for n in ("batch", "sequence", "past"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            DecodeStep(lm).eval(), (torch.cat([ids[:, :3]] * 2), past), dynamo=True,
            verbose=False, input_names=names,
            dynamic_shapes=({0: b, 1: s}, [{0: b, 2: p}] * (2 * layers))).model_proto


def decode_feed(proto: onnx.ModelProto, ids: np.ndarray, cache=None) -> dict:
    """Feeds of an :func:`export_decode_step` model: ``ids`` and the cache (``cache``: arrays
    in input order; None: an empty one, past length 0)."""
    feed = {proto.graph.input[0].name: ids}
    for i, t in enumerate(proto.graph.input[1:]):
        dims = [d.dim_value for d in t.type.tensor_type.shape.dim]
        feed[t.name] = cache[i] if cache is not None else np.zeros(
            (ids.shape[0], dims[1], 0, dims[3]), np.float32)
    return feed


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def torch_out(model, args) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.detach().numpy() for o in flatten_outputs(model(*args))]


def onnx_out(model: onnx.ModelProto, feeds=None) -> list[np.ndarray]:
    return run_onnx(model, feeds if feeds is not None else example_feeds(model))


def resnet18_pair(folder) -> tuple:
    """``folder/r18.onnx`` (torchvision resnet18, 64x64 input, seeded) and
    ``folder/r18_small.onnx``, idapgraph's compression of it (0.7 FLOPs, one block bypassed):
    the pair the review tools are checked on."""
    from pathlib import Path

    import torchvision

    import idapgraph

    folder = Path(folder)
    torch.manual_seed(0)
    a, b = folder / "r18.onnx", folder / "r18_small.onnx"
    a.write_bytes(export_onnx(torchvision.models.resnet18().eval(),
                              (torch.randn(1, 3, 64, 64),)).SerializeToString())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = idapgraph.compress(str(a), flops=0.7, blocks=1)
    b.write_bytes(res.model.SerializeToString())
    return a, b


__all__ = ["export_onnx", "resnet18_pair", "rel_err", "torch_out", "onnx_out", "example_feeds"]


class ResidualBranches(torch.nn.Module):
    """A 16-channel stream (stem, then a 1x1 head to 4 outputs) and three residual branches,
    each ``conv(16 -> width) -> relu -> conv(width -> 16)``; the outputs of the branches in
    ``damped`` are scaled down 100x, so their channels hardly move the output while the
    stream's and the other branches' do."""

    def __init__(self, width: int = 16, damped=(0, 1, 2)):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.a = torch.nn.ModuleList(torch.nn.Conv2d(16, width, 3, padding=1) for _ in range(3))
        self.b = torch.nn.ModuleList(torch.nn.Conv2d(width, 16, 3, padding=1) for _ in range(3))
        self.head = torch.nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            for i in damped:
                self.b[i].weight.mul_(0.01)
                self.b[i].bias.zero_()

    def forward(self, x):
        s = torch.relu(self.stem(x))
        for a, b in zip(self.a, self.b):
            s = s + b(torch.relu(a(s)))
        return self.head(s)
