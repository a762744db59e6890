"""Atomic writes: a temp file in the destination folder, then ``os.replace``.

ONNX models with external tensors (or over 2 GB) are written as ``OUT.onnx`` plus one data file
``OUT.onnx.data`` beside it, streamed one tensor at a time; see :func:`save_onnx`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import EmitError, InputError

PROTO_LIMIT = (1 << 31) - (1 << 26)  # protobuf's 2 GB, less room for the graph itself
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay in the model file (onnx's own default)


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None = None) -> Path:
    o = Path(out)
    if inp is not None:
        i = Path(inp)
        if o.resolve() == i.resolve() or (o.exists() and i.exists() and os.path.samefile(o, i)):
            raise InputError(f"output path {o} is the input file; choose another path")
        from ..frontends.onnx_file import data_files

        data = data_path(o).resolve()
        if data == i.resolve() or (i.is_file() and data in data_files(i)):
            raise InputError(f"output data file {data.name} would overwrite the input's "
                             "external data; choose another output name")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable")
    if o.is_dir():
        raise InputError(f"output path {o} is a folder")
    return o


def _temp(p: Path) -> tuple[int, str]:
    """A temp file beside ``p`` with the permissions a plain new file would get."""
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def _unlink(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    p = Path(path)
    fd, tmp = _temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        _unlink(tmp)
        raise


def data_path(out: str | os.PathLike) -> Path:
    """The external data file written beside ``out``."""
    o = Path(out)
    return o.with_name(o.name + ".data")


def save_onnx(model, path: str | os.PathLike, external: bool | None = None) -> None:
    """Write ``model`` to ``path`` atomically. ``external``: write tensors of 1 KiB or more to
    ``path + ".data"``; ``None`` (default) does so when the model has external tensors (it was
    read from a file with external data) or its tensors pass protobuf's 2 GB."""
    from ..frontends import onnx_external

    if external is None:
        external = onnx_external.uses_external(model) or _inline_bytes(model) > PROTO_LIMIT
    if not external:
        write_bytes_atomic(path, model.SerializeToString())
        return
    _save_external(model, Path(path))


def _inline_bytes(model) -> int:
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) for t in _get_all_tensors(model) if t.HasField("raw_data"))


def _save_external(model, path: Path) -> None:
    """Stream the tensors into a temp data file, check the model by path, then rename the data
    file and the model file into place (in that order). The proto is restored afterwards."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from ..frontends import onnx_external

    data = data_path(path)
    sources = {next((e.value for e in t.external_data if e.key == "location"), "")
               for t in onnx_external.external_tensors(model)}
    sources |= {str(f) for f in onnx_external.read_files()}
    if data.exists() and any(Path(s).exists() and os.path.samefile(s, data) for s in sources):
        raise InputError(f"output data file {data.name} would overwrite the external data of a "
                         "model read in this process; choose another output name")
    fd, tmp_data = _temp(data)
    tmp_model, saved = None, []
    try:
        with os.fdopen(fd, "wb") as f:
            for t in _get_all_tensors(model):
                if not uses_external_data(t):
                    n = onnx_external._nbytes(t)
                    if n is None or n < EXTERNAL_MIN_BYTES:
                        continue
                value = onnx_external.read(t)
                align = 65536 if value.nbytes >= (1 << 20) else 64
                offset = -(-f.tell() // align) * align
                f.seek(offset)
                onnx_external.write_array(f, value)
                del value
                saved.append((t, _detach(t), offset))
            f.flush()
            os.fsync(f.fileno())
        payload = {}
        for name in (Path(tmp_data).name, data.name):
            for t, _, offset in saved:
                onnx_external._set_entries(t, {"location": name, "offset": str(offset),
                                               "length": str(_byte_size(t))})
            payload[name] = model.SerializeToString()
        _restore(saved, tmp_data)
        fd, tmp_model = _temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(payload[Path(tmp_data).name])
        try:
            onnx.checker.check_model(tmp_model, full_check=True)
        except Exception as e:  # noqa: BLE001
            raise EmitError(f"written model fails onnx.checker: {str(e).splitlines()[0]}") from e
        with open(tmp_model, "wb") as f:
            f.write(payload[data.name])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_data, data)
        tmp_data = None
        os.replace(tmp_model, path)
        tmp_model = None
    finally:
        _restore(saved, tmp_data)
        _unlink(tmp_data)
        _unlink(tmp_model)


def _byte_size(t) -> int:
    from ..frontends.onnx_external import _nbytes

    return _nbytes(t)


def _detach(t):
    """Clear ``t``'s stored data (it was just written out); what :func:`_restore` needs."""
    from ..frontends import onnx_external

    entries = onnx_external._entries(t) if t.external_data else None
    state = (t.data_location if t.HasField("data_location") else None, entries)
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data"):
        t.ClearField(field)
    del t.external_data[:]
    return state


def _restore(saved: list, data_file: str | None) -> None:
    """Put back what :func:`_detach` cleared: external references as they were, in-memory
    data read back from ``data_file``, where it was just written."""
    for t, (location, entries), offset in saved:
        del t.external_data[:]
        if entries is not None:
            for k, v in entries.items():
                t.external_data.add(key=k, value=v)
        else:
            with open(data_file, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(_byte_size(t))
        if location is None:
            t.ClearField("data_location")
        else:
            t.data_location = location
    saved.clear()
