"""Safe reading of ONNX files: one clear error for every kind of bad input."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import InputError


def load(path: str | os.PathLike) -> onnx.ModelProto:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    data = p.read_bytes()
    if not data:
        raise InputError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InputError(f"{p}: not a valid ONNX model (truncated or corrupt: {e})") from None
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{p}: not a valid ONNX model (no graph or opset)")
    _load_external(model, p.resolve().parent)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: invalid ONNX model: {str(e).splitlines()[0]}") from None
    return model


def _load_external(model: onnx.ModelProto, base: Path) -> None:
    """Resolve external tensors against the model's folder; refuse paths that escape it."""
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, \
        uses_external_data

    ext = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for t in ext:
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise InputError(f"tensor {t.name!r} has external data without a location")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base not in target.parents:
            raise InputError(f"external data path {loc!r} of tensor {t.name!r} escapes the model's folder")
        if not target.is_file():
            raise InputError(f"external data file {loc!r} of tensor {t.name!r} is missing")
    for t in ext:
        try:
            load_external_data_for_tensor(t, str(base))
        except Exception as e:  # noqa: BLE001
            raise InputError(f"cannot read external data of tensor {t.name!r}: {e}") from None
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
