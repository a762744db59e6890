"""A torchvision detector's ONNX export (Faster R-CNN, MobileNetV3-FPN, random weights, a small
input and few proposals) compresses with the defaults: backbone and FPN convs pruned through the
FPN's run-time-sized Resize, the NMS/RoIAlign heads' data-dependent shapes left alone, healing
stepped by graph segments although the model has If subgraphs, the output error measured on
static-shape probes (issue 23; tools/detection_cost.py times the full-size model)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper

import idapgraph
from helpers import export_onnx
from idapgraph.backends import load
from idapgraph.emit.validate import check_onnx, run_onnx
from idapgraph.passes.heal import OutputError
from idapgraph.runners import onnx_stepper


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=96, max_size=96,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10)
    proto = export_onnx(m.eval(), ([torch.rand(3, 96, 96)],), opset=17)
    p = tmp_path_factory.mktemp("det") / "frcnn.onnx"
    p.write_bytes(proto.SerializeToString())
    return p


@pytest.mark.parametrize("measure", [False, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["scores", "measured"])
def test_detector_compresses_with_defaults(detector, measure):
    """The default healing (least squares) on a detector with NMS and an If; the channel
    counts from the scores alone, and (slow: 7 minutes on 2 cores) by the default's measured
    group losses."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = idapgraph.compress(str(detector), flops=0.5, method="magnitude",  # lsq healing
                                 calib=np.random.default_rng(0).random((6, 96, 96), np.float32),
                                 measure_groups=measure)
    assert (res.report.group_losses is not None) == (measure is None)
    said = " ".join(str(w.message) for w in caught)
    assert "symbolic shape inference skipped" in said and "NonZero" in said, said
    rep = res.report
    assert rep.reached and rep.flops_ratio <= 0.5
    assert rep.heal["kept"] and rep.heal["layers"] > 0
    check_onnx(res.model)  # full checker + onnxruntime (compress validated it already)
    orig = onnx.load(str(detector))
    widths = {i.name: list(i.dims) for i in res.model.graph.initializer}
    fpn = [n.input[1] for n in orig.graph.node if n.op_type == "Conv" and "fpn/inner" in n.name]
    before = {i.name: list(i.dims) for i in orig.graph.initializer}
    assert fpn and all(widths[w][0] < before[w][0] for w in fpn)  # through the FPN's Resize
    assert any(n.op_type == "If" for n in res.model.graph.node)


def test_detector_error_is_measured_on_static_probes(detector):
    m = load(str(detector))
    assert m.probes, "outputs after NMS have data-dependent sizes: probes stand in"
    assert all(None not in m.graph.shape(p) for p in m.probes)
    assert any("fpn" in p for p in m.probes)
    batches, _ = m.calibration(None)
    assert m.output_error(batches)(m.source) == 0.0


def _if_model() -> onnx.ModelProto:
    """x -> Relu -> r; an If whose branches read r (an outer name); y = branch + r."""
    then = helper.make_graph([helper.make_node("Mul", ["r", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
                             [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    other = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["b"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["b", "r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_stepper_cuts_models_with_subgraphs():
    model = _if_model()
    onnx.checker.check_model(model, full_check=True)
    xs = [np.array([1, -2, 3, 4], np.float32), np.array([-5, 1, -2, 0], np.float32)]
    step = onnx_stepper.stepper(model, [(x,) for x in xs])
    assert step is not None
    assert [r.tolist() for r in step.advance_to("r")] == [np.maximum(x, 0).tolist() for x in xs]
    got = step.results()
    want = [run_onnx(model, {"x": x}) for x in xs]
    assert [[o.tolist() for o in g] for g in got] == [[o.tolist() for o in w] for w in want]
    assert onnx_stepper.reads(model.graph.node[3]) == ["c", "r"]


def test_output_error_of_outputs_with_different_sizes():
    e = OutputError()
    e.add([np.ones((2, 4))], [np.ones((3, 4))])  # two boxes against three: nothing pairs up
    assert e.value == pytest.approx((8 + 12) / 8)


def test_outputs_with_data_dependent_sizes_compare_by_rank():
    """Mask R-CNN's export: how many boxes survive NMS changes when channels go, so those axes
    are compared by rank only (found: 'changed output shapes [(1, 4), ...] -> [(7, 4), ...]')."""
    from idapgraph.emit.validate import check_shapes
    from idapgraph.errors import EmitError

    free = [(True, False), (True, False, False, False)]
    check_shapes([(7, 4), (7, 1, 28, 28)], [(1, 4), (1, 1, 28, 28)], free)
    with pytest.raises(EmitError):
        check_shapes([(7, 5), (7, 1, 28, 28)], [(1, 4), (1, 1, 28, 28)], free)
    with pytest.raises(EmitError):
        check_shapes([(7, 4, 1), (7, 1, 28, 28)], [(1, 4), (1, 1, 28, 28)], free)
    with pytest.raises(EmitError):
        check_shapes([(7, 4), (7, 1, 28, 28)], [(1, 4), (1, 1, 28, 28)])


def test_channel_statistics_skip_empty_tensors():
    """A mask head run on no boxes gives a (0, 256, 14, 14) tensor: no entries to count (it
    raised in numpy's reshape before)."""
    from idapgraph.passes.stats import ChannelStats

    st = ChannelStats({("t", 1)})
    st({"t": np.zeros((0, 4, 2, 2), np.float32)})
    assert st.mean_std("t", 1) is None
    st({"t": np.ones((2, 4, 2, 2), np.float32)})
    assert st.mean_std("t", 1)[0].tolist() == [1.0] * 4


@pytest.mark.parametrize("route", ["fx", "onnx"])
def test_multi_output_backbone_keeps_output_widths(route):
    """Graph outputs are never pruned: the MobileNetV3 + FPN backbone's three 256-channel maps
    (a dict on fx, three outputs in ONNX) keep their widths while the inside is cut to 0.5."""
    torch.manual_seed(0)
    bb = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None).backbone.eval()
    x = torch.rand(1, 3, 96, 96)
    src = bb if route == "fx" else export_onnx(bb, (x,))
    r = idapgraph.compress(src, (x,) if route == "fx" else None, flops=0.5,
                           method="magnitude", heal="none")
    assert r.report.reached and r.report.flops_ratio <= 0.5
    if route == "fx":
        with torch.no_grad():
            widths = [v.shape[1] for v in r.model(x).values()]
    else:
        widths = [o.type.tensor_type.shape.dim[1].dim_value for o in r.model.graph.output]
    assert widths == [256, 256, 256]
