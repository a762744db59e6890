"""Atomic writes: a temp file in the destination folder, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None = None) -> Path:
    o = Path(out)
    if inp is not None:
        i = Path(inp)
        if o.resolve() == i.resolve() or (o.exists() and i.exists() and os.path.samefile(o, i)):
            raise InputError(f"output path {o} is the input file; choose another path")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable")
    if o.is_dir():
        raise InputError(f"output path {o} is a folder")
    return o


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_onnx(model, path: str | os.PathLike) -> None:
    write_bytes_atomic(path, model.SerializeToString())
