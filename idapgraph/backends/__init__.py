"""Backends: the torch (fx) and ONNX adapters behind one interface (:class:`Model`).

Everything that runs, exports, edits parameters of, bypasses blocks in or validates a model of
either kind lives here (with the frontends, emitters and runners it calls); the stages and the
public API above work through :class:`Model` only.
"""

from __future__ import annotations

import os
import sys

from ..errors import InputError
from .base import Model, np_dtype
from .onnx_model import OnnxModel, onnx_proto
from .torch_model import TorchModel

__all__ = ["Model", "TorchModel", "OnnxModel", "load", "onnx_proto", "is_torch_module", "np_dtype"]


def load(model, example_inputs=None) -> Model:
    """Wrap a torch module, an ``onnx.ModelProto`` or a path to an ONNX file."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return OnnxModel(model)
    if is_torch_module(model):
        return TorchModel(model, example_inputs)
    onnx = sys.modules.get("onnx")  # a ModelProto exists only where onnx was imported
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return OnnxModel(model)
    raise InputError(f"cannot compress a {type(model).__name__}: pass a torch nn.Module, "
                     "an onnx.ModelProto or a path to an .onnx file")


def is_torch_module(model) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch for other inputs)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)
