"""Wall-clock checks of the layer timer, on a quiet machine (not part of ``make test``: a test
never asserts on measured time).

    python3 tools/check_op_timer.py

1. A 3x3 64->64 conv (64x the work of a 1x1 8->8 one, both at 28x28) times more than 10x the
   light one, in context (the CPU's way).
2. A cheap depthwise 1x1 conv between two heavy 3x3 convs is charged less than a fifth of the
   whole call.
3. The same heavy/light ratio when layers are timed the device way (alone, through I/O
   binding), the CPU standing in for a device.
Prints each figure; exits 1 when a check fails.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

from idapgraph.emit.validate import example_feeds
from idapgraph.runners import op_timer, providers


def _sig(k: int) -> dict:
    return {"op": "conv", "spatial": [28, 28], "kernel": [k, k], "stride": [1, 1],
            "pads": [k // 2] * 4, "dilation": [1, 1], "group_in": None, "bias": True,
            "batch": 1, "dtype": "float32"}


def heavy_light() -> tuple[float, float]:
    heavy = min(op_timer.time_op(_sig(3), 64, 64) for _ in range(3))
    light = min(op_timer.time_op(_sig(1), 8, 8) for _ in range(3))
    return heavy, light


def sandwich() -> tuple[float, float]:
    """(ms charged to the middle layer, ms of the whole call)."""
    rng = np.random.default_rng(0)
    w3 = rng.standard_normal([64, 64, 3, 3]).astype(np.float32) * 0.05
    inits = [numpy_helper.from_array(w3, "w3"),
             numpy_helper.from_array(np.ones([64, 1, 1, 1], np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1] * 4, kernel_shape=[3, 3]),
             helper.make_node("Conv", ["a", "w1"], ["b"], group=64, kernel_shape=[1, 1]),
             helper.make_node("Conv", ["b", "w3"], ["y"], pads=[1] * 4, kernel_shape=[3, 3])]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 64, 56, 56]) for n in "xy"]
    m = helper.make_model(helper.make_graph(nodes, "sandwich", vi[:1], vi[1:], inits),
                          opset_imports=[helper.make_opsetid("", op_timer.OPSET)])
    middle = min(op_timer.time_in_context(m, 1, providers.CPU) for _ in range(3))
    sess = op_timer._session(m, 1, providers.CPU)
    feeds = example_feeds(m)
    whole = min(op_timer.time_session(lambda: sess.run(None, feeds)) for _ in range(3)) * 1e3
    return middle, whole


def main() -> int:
    ok = True
    heavy, light = heavy_light()
    print(f"in context: heavy {heavy:.4f} ms, light {light:.4f} ms, ratio {heavy / light:.1f}")
    ok &= heavy > 10 * light
    middle, whole = sandwich()
    print(f"sandwich: middle {middle:.4f} ms of {whole:.4f} ms ({middle / whole:.2f})")
    ok &= 0 < middle < 0.2 * whole
    providers.DEVICES["CPUExecutionProvider"] = "cpu"  # the device way, on the CPU
    op_timer.call_overhead_ms.cache_clear()
    heavy, light = heavy_light()
    print(f"I/O-bound: heavy {heavy:.4f} ms, light {light:.4f} ms, ratio {heavy / light:.1f}")
    ok &= heavy > 10 * light
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
