"""Files, for the API and the CLI alike: emitted ONNX models saved atomically (external data in,
external data out), the guard that keeps an output from overwriting its input, sizes on disk."""

from __future__ import annotations

import os

from pathlib import Path

from .backends import onnx_proto
from .emit.save import check_output_path, save_onnx, write_bytes_atomic

__all__ = ["check_output_path", "disk_size", "has_external_data", "save", "write_atomic"]


def save(model, path: str | os.PathLike, *, external: bool | None = None,
         like: str | os.PathLike | None = None) -> None:
    """Write an ONNX ``model`` to ``path`` atomically. ``external``: tensors into
    ``path + ".data"`` (True), inline (False), or (None) as the model's own tensors are -- or,
    with ``like`` (the input's path), as that file's are."""
    if external is None and like is not None and has_external_data(like):
        external = True
    save_onnx(onnx_proto(model, "save writes ONNX models (save an fx GraphModule with "
                                 "torch.save)"), path, external=external)


def has_external_data(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in data files beside it."""
    from .frontends.onnx_file import data_files

    return bool(data_files(path))


def disk_size(path: str | os.PathLike) -> int:
    """Bytes on disk of an ONNX file and of the external data files it names."""
    from .frontends.onnx_file import data_files

    return Path(path).stat().st_size + sum(f.stat().st_size for f in data_files(path))


def write_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder (never half-written)."""
    write_bytes_atomic(path, text.encode() if isinstance(text, str) else text)
