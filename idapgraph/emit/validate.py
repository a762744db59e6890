"""Validation of emitted models: nothing leaves idapgraph without passing these. (onnx is
imported where an ONNX model is checked: a torch-only run does not load it.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

from ..errors import EmitError

_NP = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_,
       2: np.uint8, 3: np.int8}


def example_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (symbolic dims become ``batch``; ints are ones)."""
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dt = _NP.get(tt.elem_type, np.float32)
        if np.issubdtype(dt, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        else:
            feeds[vi.name] = np.ones(shape, dtype=dt)
    return feeds


def session(model: onnx.ModelProto, threads: int = 0, optimize: bool = True,
            provider: str = "CPUExecutionProvider", serialized: bytes | None = None):
    """An onnxruntime session (CPU unless ``provider`` names another, which then falls back to
    the CPU for ops it lacks). An in-memory model with external tensors (see
    :mod:`idapgraph.frontends.onnx_external`) is loaded from a file beside its data files, which
    onnxruntime memory-maps; weight prepacking, which would copy the weights, is then off."""
    import onnxruntime as ort

    from ..frontends import onnx_external
    from ..runners.providers import session_providers

    providers = session_providers(provider)

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data, folder = (serialized, None) if serialized is not None else \
        onnx_external.for_runtime(model)
    if folder is not None:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if folder is None:
        return ort.InferenceSession(data, so, providers=providers)
    # from a model file in the data files' folder: onnxruntime resolves them against it
    import os
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".onnx", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return ort.InferenceSession(path, so, providers=providers)
    finally:
        os.unlink(path)


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
             optimize: bool = True, serialized: bytes | None = None) -> list[np.ndarray]:
    return session(model, optimize=optimize, serialized=serialized).run(None, feeds)


def run_unoptimised(model: onnx.ModelProto, feeds: dict[str, np.ndarray], run_large=None,
                    serialized: bytes | None = None) -> list[np.ndarray]:
    """The outputs of ``model`` on ``feeds`` without onnxruntime's optimisers: by segments
    where ``run_large`` (see :func:`check_onnx`) gives them, else as one session."""
    outs = run_large(model, feeds) if run_large is not None else None
    return outs if outs is not None else run_onnx(model, feeds, optimize=False,
                                                  serialized=serialized)


def check_onnx(model: onnx.ModelProto, output_shapes: list[tuple] | None = None,
               run_large=None) -> list[tuple]:
    """Full ONNX checker + an onnxruntime run; output shapes must match ``output_shapes``.
    Returns the output shapes of the run. ``run_large(model, feeds)``: the outputs of a run
    by segments where the model is too large for one session, else None (see
    :func:`idapgraph.runners.onnx_stepper.run_large`).

    The run is without onnxruntime's graph optimisations: every node still runs on
    onnxruntime's kernel for it, and the optimisers (which rewrite the graph into an equivalent
    one) cost time that grows with the square of the number of initializers in onnxruntime 1.32
    (its Conv+BatchNormalization fusion and NCHWc layout pass: about 100 s of a 255 s compress
    of a 50k-node graph)."""
    import onnx

    from ..frontends.onnx_external import skeleton, uses_external

    # serialised once for both the checker and the session (100 MB: 0.15 s each time)
    data = None if uses_external(model) else model.SerializeToString()
    try:
        onnx.checker.check_model(skeleton(model) if data is None else data, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EmitError(f"rewritten model fails onnx.checker: {str(e).splitlines()[0]}") from e
    try:
        outs = run_unoptimised(model, example_feeds(model), run_large, serialized=data)
    except Exception as e:  # noqa: BLE001
        raise EmitError(f"rewritten model does not run in onnxruntime: {str(e).splitlines()[0]}") from e
    got = [tuple(o.shape) for o in outs]
    if output_shapes is not None:
        check_shapes(got, output_shapes)
    return got


def check_shapes(got: list[tuple], output_shapes: list[tuple], free=None) -> None:
    """``got`` must equal ``output_shapes``; ``free`` (per output, per axis) marks the axes
    whose size depends on the data (how many boxes a detector keeps): there only the rank
    counts."""
    want = [tuple(s) for s in output_shapes]
    if free is not None and len(got) == len(want):
        got = [tuple(None if f else d for d, f in zip(g, fr)) if len(g) == len(fr) else g
               for g, fr in zip(got, free)]
        want = [tuple(None if f else d for d, f in zip(w, fr)) if len(w) == len(fr) else w
                for w, fr in zip(want, free)]
    if got != want:
        raise EmitError(f"rewritten model changed output shapes {output_shapes} -> {got}")


def check_fx(gm, example_inputs: tuple, output_shapes: list[tuple]) -> None:
    import torch

    try:
        with torch.no_grad():
            out = gm(*example_inputs)
    except Exception as e:  # noqa: BLE001
        raise EmitError(f"rewritten module does not run: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    got = [tuple(o.shape) for o in flatten_outputs(out)]
    if got != [tuple(s) for s in output_shapes]:
        raise EmitError(f"rewritten module changed output shapes {output_shapes} -> {got}")


def flatten_outputs(out) -> list:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        res = []
        for o in out:
            res.extend(flatten_outputs(o))
        return res
    return [out]
