"""Run an ONNX model in onnxruntime with requested intermediate tensors added as outputs."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .data import Batches

Reducer = Callable[[dict[str, np.ndarray]], None]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    inputs = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info)
             + list(m.graph.input) + list(m.graph.output)}
    extra = []
    for n in names:
        if n in existing or n in inputs or n in extra:
            continue
        m.graph.output.append(onnx.helper.make_tensor_value_info(
            n, types.get(n, onnx.TensorProto.FLOAT), None))
        extra.append(n)
    return m, extra


def run(model: onnx.ModelProto, names: list[str], batches: Batches, reduce: Reducer | None,
        outputs: bool = False, threads: int = 0) -> list[list[np.ndarray]]:
    from ..emit.validate import session

    n_out = len(model.graph.output)
    m, extra = _with_outputs(model, names)
    # onnxruntime's Conv+Add fusion can drop an intermediate that was made a graph output
    # (seen with onnxruntime 1.32), so sessions that expose intermediates run unoptimised.
    sess = session(m, threads=threads, optimize=not extra)
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    outs = []
    for batch in batches:
        values = sess.run(None, dict(zip(in_names, batch)))
        got = dict(zip(out_names, values))
        if reduce is not None:
            reduce({n: np.asarray(got[n], dtype=np.float32) for n in names if n in got})
        if outputs:
            outs.append([np.asarray(v) for v in values[:n_out]])
    return outs
