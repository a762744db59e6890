"""Bugs found by the fuzzer (tests/test_fuzz.py, tools/fuzz.py), each as a minimal fixed model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import idapgraph
from helpers import example_feeds, onnx_out, rel_err


def _onnx_model(nodes, inputs, outputs, inits, opset=21) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "regression", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# -- 1. a linear layer whose input has no inferred shape crashed cost analysis -------------------

def test_linear_after_tensor_of_unknown_shape_is_analysed():
    """ONNX shape inference gives GroupNormalization-21 no output shape, so the MatMul after it
    reads a tensor of unknown rank; ``cost`` indexed its shape and raised TypeError."""
    rng = np.random.default_rng(0)
    m = _onnx_model(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=1),
         helper.make_node("MatMul", ["g", "W"], ["y"])],
        [_vi("x", (1, 2, 4, 6))], [_vi("y", (1, 2, 4, 3))],
        {"s": np.ones(2), "b": np.zeros(2), "W": rng.standard_normal((6, 3))})
    a = idapgraph.analyze(m)
    assert a.cost.flops >= 0
    out = idapgraph.apply_plan(m, idapgraph.Plan())
    feeds = example_feeds(m)
    assert rel_err(onnx_out(m, feeds)[0], onnx_out(out, feeds)[0]) < 1e-6
