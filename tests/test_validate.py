"""Validation of emitted ONNX models (``OnnxModel.validate``): the output runs in onnxruntime and
keeps the source's output shapes. The source itself is run only when the output's shapes differ
from the ones shape inference gave the source, or those are not all known."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from idapgraph.backends import OnnxModel
from idapgraph.emit import validate
from idapgraph.errors import EmitError


def conv_model(c_out: int, batch):
    """x (batch, 3, 4, 4) -> Conv 3->c_out (3x3, padded) -> y (batch, c_out, 4, 4)."""
    w = numpy_helper.from_array(np.ones((c_out, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c_out, 4, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def sessions(monkeypatch):
    """The models onnxruntime sessions are made for, by output channel count."""
    made = []
    real = validate.session

    def counting(model, *a, **k):
        made.append(model.graph.initializer[0].dims[0])
        return real(model, *a, **k)

    monkeypatch.setattr(validate, "session", counting)
    return made


def test_matching_output_runs_only_the_output(sessions):
    m = OnnxModel(conv_model(4, batch=1))
    m.validate(conv_model(4, batch=1))
    assert sessions == [4]


def test_changed_output_shape_is_refused_after_running_the_source(sessions):
    m = OnnxModel(conv_model(4, batch=1))
    with pytest.raises(EmitError, match="changed output shapes"):
        m.validate(conv_model(3, batch=1))
    assert sessions == [3, 4]


def test_symbolic_output_shapes_run_the_source_once(sessions):
    m = OnnxModel(conv_model(4, batch="N"))
    assert m.graph.shape(m.graph.outputs[0])[0] is None
    m.validate(conv_model(4, batch="N"))
    m.validate(conv_model(4, batch="N"))
    assert sessions == [4, 4, 4]  # the source once, its shapes kept
    with pytest.raises(EmitError, match="changed output shapes"):
        m.validate(conv_model(3, batch="N"))
