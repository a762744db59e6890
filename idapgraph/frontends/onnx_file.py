"""Safe reading of ONNX files: one clear error for every kind of bad input. External data stays
on disk (see :mod:`idapgraph.frontends.onnx_external`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import InputError
from . import onnx_external


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
    onnx_external.prepare(model, p.resolve().parent)
    try:
        onnx.checker.check_model(onnx_external.skeleton(model))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: invalid ONNX model: {str(e).splitlines()[0]}") from None
    return model


def data_files(path: str | os.PathLike) -> set[Path]:
    """The external data files (in its own folder) that the ONNX file at ``path`` names. A file
    that cannot be read is refused (:class:`InputError`), never taken to name none: the output
    path check relies on this list to keep the input's data from being overwritten."""
    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf and the file system raise many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if isinstance(e, (DecodeError, RuntimeError, ValueError)):  # as load() says it
            raise InputError(f"{p}: not a valid ONNX model (truncated or corrupt: {first})") \
                from None
        raise InputError(f"{p}: cannot list the external data files it names, so cannot make "
                         f"sure the output does not overwrite them: {first}") from None
    base = p.resolve().parent
    out = set()
    for t in onnx_external.external_tensors(model):
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        f = (base / loc).resolve() if loc else None
        if f is not None and base in f.parents and f.is_file():
            out.add(f)
    return out
