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


def chain_model(n: int, custom_at: int | None = None):
    """x (1, 4) -> n Adds of constants with a side branch and a skip every third node -> y;
    ``custom_at``: that node is an op of a custom domain onnxruntime has no kernel for."""
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(np.full(4, i, np.float32), f"c{i}"))
        op, dom = ("Mystery", "test.custom") if i == custom_at else ("Add", "")
        nodes.append(helper.make_node(op, [prev, f"c{i}"], [f"t{i}"], domain=dom))
        if i % 3 == 2:  # a skip over the last three nodes
            nodes.append(helper.make_node("Add", [f"t{i}", f"t{i - 2}"], [f"s{i}"]))
            prev = f"s{i}"
        else:
            prev = f"t{i}"
    nodes.append(helper.make_node("Relu", ["t0"], ["side"]))  # read only as an output
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 4])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("test.custom", 1)]
                                              if custom_at is not None else [])
    return helper.make_model(g, opset_imports=opsets)


def test_large_models_run_by_segments_with_the_whole_run_s_outputs(monkeypatch):
    from idapgraph.runners import onnx_stepper

    model = chain_model(40)
    feeds = validate.example_feeds(model)
    sizes = []
    real = validate.session
    monkeypatch.setattr(validate, "session", lambda m, *a, **k: (
        sizes.append(len(m.graph.initializer)), real(m, *a, **k))[1])
    got = onnx_stepper.run_large(model, feeds, limit=8)
    assert len(sizes) >= 5 and max(sizes) <= 8  # segments of at most ``limit`` initializers
    want = validate.run_onnx(model, feeds)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert onnx_stepper.run_large(model, feeds, limit=40) is None  # small enough: whole


def test_validation_by_segments_still_runs_every_node(monkeypatch):
    from idapgraph.runners import onnx_stepper

    monkeypatch.setattr(onnx_stepper, "SEGMENT_INITIALIZERS", 8)
    m = OnnxModel(chain_model(40))
    m.validate(chain_model(40))
    with pytest.raises(EmitError, match="does not run in onnxruntime"):
        m.validate(chain_model(40, custom_at=33))  # in the fifth segment
