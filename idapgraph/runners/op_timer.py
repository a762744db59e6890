"""Time one layer: a small ONNX model per (signature, in, out channel counts), run in
onnxruntime with a fixed thread count.

* **Convolutions** are timed *in context*: between a depthwise 1×1 producer and a depthwise 1×1
  consumer (:func:`context_model`), with onnxruntime's profiler, counting only what runs between
  the two -- the layer's own kernel plus any layout change its channel counts force. On x86
  onnxruntime runs convolutions in a blocked layout (NCHWc, 8 or 16 channels a block); a conv
  timed alone pays a conversion of its input and output, which inside a network happens only
  where a layer's counts break the layout. Alone, a 16-channel 3×3 depthwise conv at 112×112
  measured 135 µs, 92 of them layout conversions; in context, 35 µs, and an 8-channel input to a
  1×1 conv costs its 26 µs conversion there, which a conv timed alone never shows.
* **Linear layers** (MatMul + Add) are timed alone, the per-call overhead of an empty model
  taken off.
* **On a device provider** (``CUDAExecutionProvider``; :mod:`.providers`) every layer is timed
  alone, inputs and outputs kept on the device (I/O binding), less the overhead of an empty
  call made the same way: the blocked CPU layout does not exist there, and onnxruntime's
  profiler does not see when device kernels end.

A *signature* is a JSON-able dict naming everything but the two channel counts: ``{"op": "conv",
"spatial": [56, 56], "kernel": [3, 3], "stride": ..., "pads": ..., "dilation": ...,
"group_in": 1 | None, "bias": true, "batch": 1, "dtype": "float32"}`` or ``{"op": "linear",
"rows": M, "bias": ..., "dtype": ...}``. Latency look-up tables (:mod:`idapgraph.passes.latency`)
key their entries by it.
"""

from __future__ import annotations

import bisect
import json
import platform
import statistics
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..emit.validate import example_feeds
from . import providers
from .affinity import pinned
from .providers import CPU

_DT = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}
OPSET = 17
# how entries are timed; part of the table key, so tables timed another way are not mixed in
# (2: convs in context; 3: on pinned CPUs, runners.affinity)
TIMING = 3


def one_op_model(sig: dict, cin: int, cout: int) -> onnx.ModelProto:
    """The one-node model of ``sig`` with ``cin`` input and ``cout`` output channels."""
    elem, np_dt = _DT.get(sig.get("dtype", "float32"), _DT["float32"])
    rng = np.random.default_rng(0)
    batch = int(sig.get("batch", 1))
    inits = []
    if sig["op"] == "conv":
        gi = sig.get("group_in")
        groups = 1 if not gi else max(1, cin // gi)
        k = list(sig["kernel"])
        w = (rng.standard_normal([cout, cin // groups, *k]) * 0.1).astype(np_dt)
        inits.append(numpy_helper.from_array(w, "w"))
        ins = ["x", "w"]
        if sig.get("bias"):
            inits.append(numpy_helper.from_array(np.zeros(cout, np_dt), "b"))
            ins.append("b")
        node = helper.make_node("Conv", ins, ["y"], group=groups, strides=sig["stride"],
                                pads=sig["pads"], dilations=sig["dilation"], kernel_shape=k)
        x_shape = [batch, cin, *sig["spatial"]]
        nd = len(k)
        y_shape = [batch, cout] + [
            (d + sig["pads"][i] + sig["pads"][i + nd] - sig["dilation"][i] * (k[i] - 1) - 1)
            // sig["stride"][i] + 1 for i, d in enumerate(sig["spatial"])]
        nodes = [node]
    elif sig["op"] == "linear":
        w = (rng.standard_normal([cin, cout]) * 0.1).astype(np_dt)
        inits.append(numpy_helper.from_array(w, "w"))
        x_shape = [int(sig["rows"]), cin]
        y_shape = [int(sig["rows"]), cout]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not sig.get("bias") else "m"])]
        if sig.get("bias"):
            inits.append(numpy_helper.from_array(np.zeros(cout, np_dt), "b"))
            nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    else:
        raise ValueError(f"no timing model for op {sig['op']!r}")
    graph = helper.make_graph(nodes, "op", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", elem, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def context_model(sig: dict, cin: int, cout: int) -> onnx.ModelProto:
    """The conv of ``sig`` between a depthwise 1×1 conv producing its input (node ``pre``) and
    one consuming its output (node ``post``): neighbours that keep onnxruntime's blocked layout
    whenever the layer's counts allow it."""
    if sig["op"] != "conv":
        raise ValueError("only convolutions are timed in context")
    g = one_op_model(sig, cin, cout).graph
    elem = g.input[0].type.tensor_type.elem_type
    np_dt = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    nd = len(sig["kernel"])
    inits = list(g.initializer)
    nodes = []
    for name, c, src, dst in (("pre", cin, "x_in", "x"), ("post", cout, "y", "y_out")):
        inits.append(numpy_helper.from_array(np.full([c, 1] + [1] * nd, 0.5, np_dt), f"{name}_w"))
        nodes.append(helper.make_node("Conv", [src, f"{name}_w"], [dst], name=name, group=c,
                                      kernel_shape=[1] * nd))
    layer = g.node[0]
    layer.name = "layer"

    def shape(vi):
        return [d.dim_value for d in vi.type.tensor_type.shape.dim]

    x = helper.make_tensor_value_info("x_in", elem, shape(g.input[0]))
    y = helper.make_tensor_value_info("y_out", elem, shape(g.output[0]))
    graph = helper.make_graph([nodes[0], layer, nodes[1]], "op_in_context", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return so


def _session(model: onnx.ModelProto, threads: int, provider: str):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), _options(threads),
                                providers=providers.session_providers(provider))


def time_session(call, *, blocks: int = 7, block_s: float = 0.002, warmup: int = 2) -> float:
    """Median seconds per ``call()`` over ``blocks`` timed blocks of repeated calls (each block
    at least ``block_s`` long, so sub-millisecond ops are timed over many calls)."""
    for _ in range(warmup):
        call()
    t = time.perf_counter()
    call()
    one = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(block_s / one))
    times = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - t) / reps)
    return statistics.median(times)


def _time_alone(model: onnx.ModelProto, threads: int, provider: str) -> float:
    """Milliseconds per call of ``model`` on ``provider``, called the provider's way
    (:func:`providers.bound_call`)."""
    with pinned(threads):
        sess = _session(model, threads, provider)
        return 1e3 * time_session(providers.bound_call(sess, example_feeds(model, seed=1),
                                                       provider))


@lru_cache(maxsize=8)
def call_overhead_ms(threads: int, provider: str) -> float:
    """What onnxruntime spends on a call that computes nothing (an Identity of one float),
    called the way layers are."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    return min(_time_alone(m, threads, provider) for _ in range(3))


def time_in_context(model: onnx.ModelProto, threads: int, provider: str, *,
                    min_runs: int = 10, max_runs: int = 200, budget_s: float = 0.015) -> float:
    """Milliseconds spent per call between the first and the last compute node of ``model``
    (the ``pre``/``post`` neighbours of :func:`context_model`; layout conversions do not count
    as compute nodes), from onnxruntime's profiler: the mean of the middle half of the per-call
    sums (the profiler counts whole microseconds, so a mean, not a median)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp, pinned(threads):
        so = _options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "op")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
        feeds = example_feeds(model, seed=1)
        for _ in range(2):
            sess.run(None, feeds)
        t0, n = time.perf_counter(), 0
        while n < min_runs or (n < max_runs and time.perf_counter() - t0 < budget_s):
            sess.run(None, feeds)
            n += 1
        events = json.loads(Path(sess.end_profiling()).read_text())
    return between_neighbours_ms(events, n)


def between_neighbours_ms(events: list[dict], n: int) -> float:
    """Milliseconds per call between the first and the last compute node, read off the last
    ``n`` calls (``model_run`` events) of an onnxruntime profile: each call's kernels
    (``*_kernel_time`` events within it) after its first compute kernel and before its last
    (``Reorder*`` layout conversions are not compute), the mean of the middle half of the
    per-call sums."""
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kernels = sorted((e["ts"], e["dur"], e.get("args", {}).get("op_name", ""))
                     for e in events if e.get("cat") == "Node"
                     and str(e.get("name", "")).endswith("_kernel_time"))
    starts = [ts for ts, _, _ in kernels]
    sums = []
    for start, end in calls[-n:]:  # both sorted: each call's kernels are one slice
        seq = [(d, op) for _, d, op in
               kernels[bisect.bisect_left(starts, start):bisect.bisect_right(starts, end)]]
        compute = [i for i, (_, op) in enumerate(seq) if not op.startswith("Reorder")]
        if len(compute) >= 2:
            sums.append(sum(d for d, _ in seq[compute[0] + 1:compute[-1]]))
    if not sums:
        raise RuntimeError("onnxruntime's profile has no timed layer between its neighbours")
    sums.sort()
    q = len(sums) // 4
    return float(np.mean(sums[q:len(sums) - q])) / 1e3


def time_op(sig: dict, cin: int, cout: int, *, threads: int = 1, provider: str = CPU) -> float:
    """Milliseconds one call of the layer takes: on the CPU a conv in context
    (:func:`time_in_context`); a linear layer, and on a device provider
    (:data:`providers.DEVICES`) every layer, alone less the empty-call overhead (never below
    0)."""
    if sig["op"] == "conv" and provider not in providers.DEVICES:
        return time_in_context(context_model(sig, cin, cout), threads, provider)
    ms = _time_alone(one_op_model(sig, cin, cout), threads, provider)
    return max(0.0, ms - call_overhead_ms(threads, provider))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int = 1, provider: str = CPU) -> dict:
    """What a timing depends on besides the layer: CPU, onnxruntime, provider (and the device
    it runs on), threads (the key of a :class:`~idapgraph.passes.latency.LatencyTable`)."""
    import onnxruntime as ort

    info = {"cpu": _cpu_name(), "arch": platform.machine(), "onnxruntime": ort.__version__,
            "provider": provider, "threads": int(threads), "timing": TIMING}
    if provider != CPU:
        info["device"] = providers.device_name(provider)
    return info
