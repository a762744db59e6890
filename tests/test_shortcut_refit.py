"""Least-squares healing of a layer whose output reaches a residual add: fitted to the original's
output plus the shortcut's drift (:class:`idapgraph.passes.reconstruct.Shortcut`), so the add
computes the original's value as closely as the layer can make it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import idapgraph
from idapgraph.ir.plan import Plan
from idapgraph.passes import reconstruct as rc

from helpers import export_onnx


def test_the_target_is_shifted_by_the_drift_over_the_norm_scale():
    """Kept output channels 0 and 2 of 3: their targets move by ``(r - r̃) / a``; the removed
    channel and a channel whose scale is almost 0 are left alone."""
    site = rc.Site("c", "x", "y", "w", None, {"pads": [0] * 4}, 0, 1, np.array([0, 2]))
    y = np.ones((1, 3, 2, 2), np.float32)
    r_orig = np.stack([np.full((2, 2), v) for v in (5.0, 7.0, 9.0)])[None].astype(np.float32)
    r_pruned = np.stack([np.full((2, 2), v) for v in (3.0, 8.0)])[None].astype(np.float32)
    got = rc.compensated(site, y, r_orig, r_pruned, np.array([2.0, 4.0]))
    assert np.allclose(got[0, :, 0, 0], [1 + 2 / 2, 1, 1 + 1 / 4])
    tiny = rc.compensated(site, y, r_orig, r_pruned, np.array([2.0, 1e-6]))
    assert np.allclose(tiny[0, :, 0, 0], [2, 1, 1])
    wrong = rc.compensated(site, y, r_orig, r_pruned[:, :1], None)
    assert wrong is y  # shapes that do not line up: unchanged


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block1, self.block2 = Block(8), Block(8)

    def forward(self, x):
        return self.block2(torch.relu(self.block1(torch.relu(self.stem(x)))))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.running_var.data.uniform_(0.5, 2.0)
        bn.running_mean.data.normal_(0, 0.3)
    return net.eval()


def test_a_residual_blocks_last_conv_is_given_its_shortcut():
    """Through nn.Identity (the shortcut module) and the BatchNorm after the conv; a conv read
    by a ReLU has none."""
    a = idapgraph.analyze(_net(), (torch.randn(1, 3, 8, 8),))
    by_node = {s.node: s for s in rc.sites(a.graph, _rewrite(a))}
    convs = [n.name for n in a.graph if n.op == "conv"]
    last = by_node[convs[-1]].shortcut
    assert last is not None and last.norms == ("block2_bn2",)
    assert "block2_conv1" in a.graph.tensors[last.tensor].consumers  # block 2's input, not the
    assert a.graph.nodes[a.graph.tensors[last.tensor].producer].op == "unary"  # Identity's output
    assert by_node[convs[-2]].shortcut is None


def _rewrite(a):
    from idapgraph.passes import prune

    return prune.resolve(a.graph, a.coupling, _plan(a.graph.backend))


def _plan(backend: str) -> Plan:
    """Block 1's inner channels 0..4 of 8 removed (group ``w1.out`` on both backends: the
    weighted nodes in the same order): block 1's output drifts, and with it block 2's
    shortcut."""
    return Plan(remove={"w1.out": [0, 1, 2, 3, 4]}, meta={"backend": backend})


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_compensating_the_shortcut_lowers_the_output_error(backend, monkeypatch):
    """The same plan healed with and without the shortcut's drift in block 2's target: the
    model's output (block 2's add) is closer to the original's on the calibration images and
    on other images with it; on ONNX the exporter folded the BatchNorms (no norm on the way)."""
    net, x = _net(), torch.randn(64, 3, 8, 8)
    model = net if backend == "torch" else export_onnx(net, (x[:1],),
                                                        dynamic_axes={"input": {0: "n"}},
                                                        input_names=["input"])
    plan = _plan(backend)
    errors = {}
    for on in (True, False):
        if not on:
            monkeypatch.setattr(rc, "shortcut_of", lambda *args: None)
        res = idapgraph.compress(model, (x[:1],) if backend == "torch" else None, plan=plan,
                                 calib=x.numpy())
        assert res.report.heal["kept"]
        errors[on] = (res.report.heal["error_after"], _held_out_error(net, res.model, backend))
    assert errors[True][0] < 0.9 * errors[False][0], errors
    assert errors[True][1] < errors[False][1], errors


def _held_out_error(net, pruned, backend) -> float:
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(x).numpy()
    if backend == "torch":
        with torch.no_grad():
            got = pruned(x).numpy()
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.sum((got - ref) ** 2) / np.sum(ref ** 2))


def test_a_projection_shortcut_computed_after_the_layer_is_not_used():
    """torchvision's ResNet-18 computes a downsampling block's projection (1x1 conv + BN)
    after its conv2: stepping to it would run that conv before its refit, so that conv2 has no
    shortcut; the next block's conv2 (identity shortcut) has one."""
    import torchvision

    a = idapgraph.analyze(torchvision.models.resnet18(num_classes=10).eval(),
                          (torch.randn(1, 3, 32, 32),))
    every = {n.name: rc.site(a.graph, n) for n in a.graph if n.op == "conv"}
    order = {n.name: i for i, n in enumerate(a.graph)}
    sc = {k: rc.shortcut_of(a.graph, s.x, s.y, order) for k, s in every.items()}
    assert sc["layer2_0_conv2"] is None
    assert sc["layer2_1_conv2"] is not None and sc["layer2_1_conv2"].norms == ("layer2_1_bn2",)
    assert sc["layer2_0_downsample_0"] is None  # its add's other operand is the main branch
    assert sc["layer2_0_conv1"] is None  # read by its BatchNorm, then a ReLU
