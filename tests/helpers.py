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


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def torch_out(model, args) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.detach().numpy() for o in flatten_outputs(model(*args))]


def onnx_out(model: onnx.ModelProto, feeds=None) -> list[np.ndarray]:
    return run_onnx(model, feeds if feeds is not None else example_feeds(model))


__all__ = ["export_onnx", "rel_err", "torch_out", "onnx_out", "example_feeds"]
