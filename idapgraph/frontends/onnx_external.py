"""External-data tensors of ONNX models, kept on disk and memory-mapped when read.

A model read from a file whose tensors live in external data files is held as a small
``ModelProto``: tensors of at most :data:`INLINE_BYTES` are read in (shape constants, biases,
norm parameters), every larger one keeps its external reference with the location rewritten to
the resolved absolute path of its data file. Such a reference never leaves idapgraph:
:func:`idapgraph.emit.save.save_onnx` writes a fresh data file beside the output, the checker
is given a :func:`skeleton`, and onnxruntime a copy with locations inside a scratch folder
where the data files are hard-linked (:func:`for_runtime`), so it maps them itself.

Reading an external tensor maps just its byte range (``np.memmap``, read-only); nothing is
cached, so the pages leave the process when the array is dropped. A tensor that a rewrite
changes is written at once to a scratch data file (:func:`spill`) and referenced there, so a
rewrite of a model larger than memory holds one tensor at a time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import LazyValues
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from ..errors import InputError

INLINE_BYTES = 1 << 16  # external tensors up to this size are read into the model at load

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
       onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
       onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16,
       onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
       onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.UINT32: np.uint32,
       onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_}


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _set_entries(t: onnx.TensorProto, entries: dict[str, str]) -> None:
    del t.external_data[:]
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    t.data_location = onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of ``model`` (initializers and attribute tensors, subgraphs included)
    whose data is external."""
    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def uses_external(model: onnx.ModelProto) -> bool:
    return bool(external_tensors(model))


def _nbytes(t: onnx.TensorProto) -> int | None:
    dt = _NP.get(t.data_type)
    return None if dt is None else int(np.prod(t.dims, dtype=np.int64)) * np.dtype(dt).itemsize


_inputs: set[Path] = set()  # every external data file read in this process


def read_files() -> set[Path]:
    """The external data files of every model loaded in this process (never to be written)."""
    return set(_inputs)


def prepare(model: onnx.ModelProto, base: str | os.PathLike) -> None:
    """Check every external reference of ``model`` (read from folder ``base``) before any data
    is read, then read small tensors in and point large ones at their absolute data path.
    Refused: locations that are absolute or escape ``base``, missing data files, byte ranges
    past a file's end or of the wrong length, element types that cannot be mapped."""
    base = Path(base).resolve()
    ext = external_tensors(model)
    where = []
    for t in ext:
        e = _entries(t)
        loc = e.get("location")
        if not loc:
            raise InputError(f"tensor {t.name!r} has external data without a location")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base not in target.parents:
            raise InputError(f"external data path {loc!r} of tensor {t.name!r} escapes the "
                             "model's folder")
        if not target.is_file():
            raise InputError(f"external data file {loc!r} of tensor {t.name!r} is missing")
        try:
            offset, length = int(e.get("offset", 0)), e.get("length")
        except ValueError:
            raise InputError(f"tensor {t.name!r}: external data offset is not a number") from None
        size = target.stat().st_size
        want = _nbytes(t)
        if want is None:
            raise InputError(f"tensor {t.name!r}: external data of element type "
                             f"{onnx.TensorProto.DataType.Name(t.data_type)} is not supported")
        if length is not None and (not length.isdigit() or int(length) != want):
            raise InputError(f"tensor {t.name!r}: external data length {length} does not match "
                             f"its shape {list(t.dims)} ({want} bytes)")
        if offset < 0 or offset + want > size:
            raise InputError(f"tensor {t.name!r}: external data range {offset}..{offset + want} "
                             f"runs past the end of {loc!r} ({size} bytes)")
        where.append((t, target, offset, want))
    _inputs.update(target for _, target, _, _ in where)
    for t, target, offset, want in where:
        if want <= INLINE_BYTES:
            with open(target, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(want)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
        else:
            _set_entries(t, {"location": str(target), "offset": str(offset),
                             "length": str(want)})


def read(t: onnx.TensorProto) -> np.ndarray:
    """The values of ``t``: a read-only memory map for an external tensor (see
    :func:`prepare`), else the array decoded from the proto."""
    if not uses_external_data(t):
        return onnx.numpy_helper.to_array(t)
    e = _entries(t)
    dt = _NP[t.data_type]
    shape = tuple(int(d) for d in t.dims)
    if not int(np.prod(shape, dtype=np.int64)):
        return np.zeros(shape, dtype=dt)
    return np.memmap(e["location"], dtype=dt, mode="r", offset=int(e.get("offset", 0)),
                     shape=shape)


class ExternalValues(LazyValues):
    """graphsurgeon's lazy values over an external tensor, read by memory map. graphsurgeon
    exports an unloaded ``LazyValues`` as its original proto, so the reference survives."""

    def load(self):
        return read(self.tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx`` with external tensors read through :class:`ExternalValues`."""
    g = gs.import_onnx(model)
    for c in g.tensors().values():
        if isinstance(c, gs.Constant) and isinstance(c._values, LazyValues) \
                and uses_external_data(c._values.tensor):
            c._values = ExternalValues(c._values.tensor)
            c._idapgraph_source = c._values
    return g


def values(c: gs.Constant) -> np.ndarray:
    """The values of a graphsurgeon constant without caching a memory map on it."""
    lazy = c._values
    if isinstance(lazy, ExternalValues):
        return read(lazy.tensor)
    return np.asarray(c.values)


def relazy(g: gs.Graph) -> None:
    """Undo graphsurgeon's caching of a read external tensor whose values were not replaced
    (the map is read-only, so an unreplaced map is unchanged): it exports as its reference."""
    for c in g.tensors().values():
        src = getattr(c, "_idapgraph_source", None)
        if src is not None and isinstance(c._values, np.memmap) \
                and _same_range(c._values, src.tensor):
            c._values = src


def _same_range(m: np.memmap, t: onnx.TensorProto) -> bool:
    e = _entries(t)
    return (os.fspath(m.filename) == e.get("location") and m.offset == int(e.get("offset", 0))
            and tuple(m.shape) == tuple(t.dims) and not m.flags.writeable)


def set_values(c: gs.Constant, value: np.ndarray, external: bool) -> None:
    """Give ``c`` new values: in memory, or (``external``) written to the scratch data file and
    referenced there."""
    value = np.ascontiguousarray(value)
    if external and value.nbytes > INLINE_BYTES:
        c._values = ExternalValues(spill(c.name, value))
        c._idapgraph_source = c._values
        c.data_location = onnx.TensorProto.EXTERNAL
    else:
        c.values = value
        c.data_location = None


# -- scratch data -------------------------------------------------------------------------------

_scratch: dict[str, object] = {}
_lock = threading.RLock()


def scratch_dir() -> str:
    """The process's scratch folder (under ``TMPDIR``), removed at exit."""
    with _lock:
        if "dir" not in _scratch:
            d = tempfile.mkdtemp(prefix="idapgraph-")
            atexit.register(shutil.rmtree, d, True)
            _scratch["dir"], _scratch["links"] = d, {}
        return _scratch["dir"]


def _scratch_file():
    """The process's append-only scratch data file."""
    with _lock:
        if "file" not in _scratch:
            path = os.path.join(scratch_dir(), "tensors.data")
            _scratch["path"], _scratch["file"] = path, open(path, "w+b")
        return _scratch["path"], _scratch["file"]


def _in_scratch(path: str) -> str:
    """The name, inside :func:`scratch_dir`, of data file ``path``: its own for a scratch file,
    else a hard link to it made once (a copy across file systems)."""
    d = scratch_dir()
    if os.path.dirname(path) == d:
        return os.path.basename(path)
    with _lock:
        links = _scratch["links"]
        if path not in links:
            name = f"input{len(links)}-{os.path.basename(path)}"
            try:
                os.link(path, os.path.join(d, name))
            except OSError:
                shutil.copyfile(path, os.path.join(d, name))
            links[path] = name
        return links[path]


def for_runtime(model: onnx.ModelProto) -> tuple[bytes, str | None]:
    """The serialised model for an onnxruntime session, and the folder its external tensors
    are read from (``None`` without any): locations relative to :func:`scratch_dir`, where the
    data files are linked, so onnxruntime maps them itself (handing it arrays makes it copy)."""
    if not uses_external(model):
        return model.SerializeToString(), None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in external_tensors(m):
        e = _entries(t)
        e["location"] = _in_scratch(e["location"])
        _set_entries(t, e)
    return m.SerializeToString(), scratch_dir()


def spill(name: str, value: np.ndarray) -> onnx.TensorProto:
    """Append ``value`` to the scratch data file; a proto referencing it (absolute location)."""
    path, f = _scratch_file()
    with _lock:
        f.seek(0, os.SEEK_END)
        offset = -(-f.tell() // 4096) * 4096
        f.seek(offset)
        write_array(f, value)
        f.flush()
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    t.dims.extend(value.shape)
    _set_entries(t, {"location": path, "offset": str(offset), "length": str(value.nbytes)})
    return t


def write_array(f, value: np.ndarray, chunk: int = 1 << 26) -> None:
    """Write ``value``'s bytes (little-endian, C order) to ``f`` in slices of ``chunk`` bytes,
    so a memory-mapped source is never read in whole."""
    flat = np.ascontiguousarray(value).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    step = max(1, chunk // max(flat.itemsize, 1))
    for i in range(0, flat.size, step):
        f.write(flat[i:i + step].tobytes())


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for ``onnx.checker`` of an in-memory model with external tensors: each external
    initializer of the main graph becomes a graph input of the same type and shape (the checker
    only accepts locations relative to a model file). The saved model is checked by path."""
    ext = {t.name for t in model.graph.initializer if uses_external_data(t)}
    if not ext:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [t for t in out.graph.initializer if t.name not in ext]
    inputs = {i.name for i in out.graph.input}
    for t in out.graph.initializer:
        if t.name in ext and t.name not in inputs:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                       list(t.dims)))
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
