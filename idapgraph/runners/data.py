"""Calibration data in any of the accepted forms -> a list of batches (tuples of numpy arrays,
one per model input, batch on the first axis)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InputError

Batches = list[tuple[np.ndarray, ...]]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize == 2 and str(x.dtype) != "torch.float16":
            x = x.float()  # bfloat16: numpy has no such type; the torch runner casts back
        return x.numpy()
    return np.asarray(x)


def _as_tuple(b: Any) -> tuple:
    if isinstance(b, dict):
        return tuple(b.values())
    if isinstance(b, (list, tuple)):
        return tuple(b)
    return (b,)


def calibration_batches(calib: Any, inputs: Sequence[tuple[str, tuple, str]], *, n_inputs: int,
                        drop_labels: bool = True, seed: int = 0, random_samples: int = 32,
                        batch_size: int = 8) -> tuple[Batches, bool]:
    """Normalise ``calib`` for a model whose inputs are ``(name, shape, dtype)``.

    Accepts a tensor/array (single-input models), a tuple of them, a DataLoader or any
    iterable of batches (a batch may carry labels after the inputs: they are dropped), a
    mapping of input name -> array, or the path of an ``.npz`` file with arrays named by model
    input (a single-input model may use any name). ``None`` gives ``random_samples`` seeded
    standard-normal samples; the second return value says whether the data is real.
    """
    if calib is None:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(-(-random_samples // batch_size)):
            batch = []
            for _, shape, dtype in inputs:
                shp = [batch_size if (d is None or i == 0) else d for i, d in enumerate(shape)]
                dt = _dtype(dtype) or np.dtype(np.float32)
                if np.issubdtype(dt, np.floating):
                    batch.append(rng.standard_normal(shp).astype(dt))
                else:
                    batch.append(np.zeros(shp, dtype=dt))
            out.append(tuple(batch))
        return out, False
    batches = _real_batches(calib, inputs, n_inputs=n_inputs, drop_labels=drop_labels,
                            batch_size=batch_size)
    return _match_dtypes(batches, inputs), True


def _match_dtypes(batches: Batches, inputs) -> Batches:
    """Float arrays take the float dtype of their model input (float32 data for a float16
    model, as a DataLoader gives it); other kinds are left for onnxruntime to judge."""
    want = [_dtype(d) for _, _, d in inputs]
    out = []
    for b in batches:
        out.append(tuple(a.astype(w) if w is not None and a.dtype != w and a.dtype.kind == "f"
                         and w.kind == "f" else a for a, w in zip(b, want + [None] * len(b))))
    return out


def _dtype(name: str):
    """numpy dtype of a model input for calibration arrays; float32 stands in for float types
    numpy lacks (bfloat16, float8)."""
    if name and (name == "bfloat16" or name.startswith("float8")):
        return np.dtype(np.float32)
    try:
        return np.dtype(name) if name else None
    except TypeError:
        return None


def _real_batches(calib, inputs, *, n_inputs, drop_labels, batch_size) -> Batches:
    if isinstance(calib, (str, os.PathLike)):
        calib = _load_npz(os.fspath(calib), inputs)
    if isinstance(calib, dict):
        names = [n for n, _, _ in inputs]
        if len(inputs) == 1 and len(calib) == 1:
            arrays = [_to_numpy(next(iter(calib.values())))]
        else:
            missing = [n for n in names if n not in calib]
            if missing:
                raise InputError(f"calibration data lacks model input(s) {missing}; has {sorted(calib)}")
            arrays = [_to_numpy(calib[n]) for n in names]
        return _split(arrays, batch_size)
    if hasattr(calib, "shape") or (isinstance(calib, tuple) and calib and all(hasattr(c, "shape") for c in calib)):
        arrays = [_to_numpy(a) for a in _as_tuple(calib)]
        return _split(arrays, batch_size)
    if isinstance(calib, Iterable):
        out = []
        for b in calib:
            t = tuple(_to_numpy(a) for a in _as_tuple(b))
            if drop_labels:
                t = t[:n_inputs]
            if len(t) != n_inputs:
                raise InputError(f"a calibration batch has {len(t)} arrays, the model takes {n_inputs}")
            out.append(t)
        if not out:
            raise InputError("calibration data is empty")
        return out
    raise InputError(f"unsupported calibration data of type {type(calib).__name__}")


def _split(arrays: list[np.ndarray], batch_size: int) -> Batches:
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise InputError("calibration arrays have different batch sizes")
    total = n.pop()
    if total == 0:
        raise InputError("calibration data is empty")
    return [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, total, batch_size)]


def _load_npz(path: str, inputs) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such calibration file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise many kinds
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    for name, shape, dtype in inputs:
        arr = data.get(name, next(iter(data.values())) if len(inputs) == 1 and len(data) == 1 else None)
        if arr is None:
            continue
        if arr.ndim != len(shape) or any(d is not None and i > 0 and d != s
                                          for i, (d, s) in enumerate(zip(shape, arr.shape))):
            raise InputError(f"{path}: array for input {name!r} has shape {arr.shape}, "
                             f"the model takes {tuple(shape)}")
        if np.dtype(arr.dtype).kind != np.dtype(dtype).kind:
            raise InputError(f"{path}: array for input {name!r} has dtype {arr.dtype}, "
                             f"the model takes {dtype}")
    return data


def rebatch(batches: Batches, size: int, exact: bool) -> Batches:
    """Re-split batches into chunks of ``size`` along the first axis; ``exact`` (static-batch
    models) drops a shorter remainder, otherwise it is kept."""
    out: Batches = []
    for b in batches:
        n = len(b[0])
        for i in range(0, n, size):
            if exact and i + size > n:
                break
            out.append(tuple(a[i:i + size] for a in b))
    if not out:
        raise InputError(f"calibration data has fewer samples than the model's batch size {size}")
    return out
