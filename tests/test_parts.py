"""Torch modules that torch.fx cannot trace as a whole, compressed by their parts
(``idapgraph.stages.parts``): a torchvision detector on the fx route, and small modules that show
each rule -- parts found top-down, a module shared by several calls calibrated on all of them,
the target carried by the prunable parts, zero-then-remove equivalence through
``apply_plan``, and one clear line where nothing can reach the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import idapgraph
from helpers import rel_err, torch_out
from idapgraph.backends import torch_parts
from idapgraph.errors import InputError
from idapgraph.stages import parts


class Shared(torch.nn.Module):
    """A backbone over a list of images (a Python loop fx cannot trace), a branch on a value
    (which torch.export cannot trace), then one head run on each of two scales (a module
    called twice per forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(48, 5, 1))

    def forward(self, images: list):
        x = torch.stack([im for im in images])
        f = self.backbone(x)
        if float(f.mean()) > 1e6:  # data-dependent Python control flow
            f = f / 2
        small = torch.nn.functional.avg_pool2d(f, 2)
        return {"big": self.head(f), "small": self.head(small)}


def _images(seed: int, n: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def _flat(out) -> list[np.ndarray]:
    return [out[k].detach().numpy() for k in sorted(out)]


def test_parts_of_an_untraceable_module():
    torch.manual_seed(0)
    m = Shared().eval()
    args = (_images(0),)
    split = torch_parts.split(m, args, calib=[(_images(s),) for s in range(1, 4)])
    assert [p.name for p in split.parts] == ["backbone", "head"]
    head = split.parts[1]
    assert len(head.calib) == 6  # three calibration calls of the model, two head calls each
    assert {tuple(c[0].shape[-2:]) for c in head.calib} == {(16, 16), (8, 8)}
    assert split.flops == sum(p.flops for p in split.parts) > 0


def test_labels_after_the_inputs_are_dropped():
    """A DataLoader of (images, targets) calibrates as its images alone, as on the traced route
    (the model's forward takes one argument: the targets would have been a second)."""
    m = Shared().eval()
    targets = [{"labels": torch.tensor([1])}] * 2
    split = torch_parts.split(m, (_images(0),), calib=[(_images(s), targets) for s in (1, 2)])
    assert len(split.parts[1].calib) == 4  # two calls of the model, two head calls each


def test_compressed_by_parts_equals_the_zeroed_original():
    torch.manual_seed(0)
    m = Shared().eval()
    args = (_images(0),)
    r = idapgraph.compress(m, args, flops=0.6, method="random", heal="none")
    rep = r.report
    assert rep.backend == "fx-parts" and rep.reached and rep.flops_ratio <= 0.6 + 1e-9
    assert [p["module"] for p in rep.parts] == ["backbone", "head"]
    assert all(p["flops_after"] < p["flops_before"] for p in rep.parts)
    out = r.model(*args)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in m(*args).items()}
    zero = idapgraph.apply_plan(m, r.plan, args, mode="zero")
    again = idapgraph.apply_plan(m, r.plan, args)
    new = (_images(7),)  # other inputs than the example's
    with torch.no_grad():
        want, got, got2 = _flat(zero(*new)), _flat(r.model(*new)), _flat(again(*new))
    assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-5
    assert max(rel_err(w, g) for w, g in zip(want, got2)) < 1e-5
    assert max(abs(w).max() for w in want) > 0


def test_healed_parts_with_calibration():
    torch.manual_seed(0)
    m = Shared().eval()
    args = (_images(0),)
    calib = [(_images(s),) for s in range(1, 5)]
    r = idapgraph.compress(m, args, flops=0.6, calib=calib, measure_groups=False)
    assert r.report.reached and r.report.calibration == "data"
    assert set(r.report.heal) == {"backbone", "head"}
    assert all(h["kept"] for h in r.report.heal.values())


def test_out_of_reach_and_unsupported_options():
    torch.manual_seed(0)
    m = Shared().eval()
    args = (_images(0),)
    with pytest.warns(UserWarning, match="target not reachable"):
        r = idapgraph.compress(m, args, flops=0.001, method="random", heal="none")
    assert not r.report.reached
    # 40 of 100 FLOPs outside the parts: 0.5 of the whole is 0.5 - 0.4 of the parts' 60
    assert parts.part_ratio(0.5, 100, 60, "flops") == pytest.approx(1 / 6)
    with pytest.raises(InputError, match="out of reach.*hold 0.600"):
        parts.part_ratio(0.4, 100, 60, "flops")
    with pytest.raises(InputError, match="only in parts: latency"):
        idapgraph.compress(m, args, latency=0.5)
    with pytest.raises(InputError, match="only in parts"):
        idapgraph.compress(m, args, flops=0.5, keep=["head*"])


class NoParts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, images: list):
        if float(images[0].mean()) > 1e6:
            return []
        return [im * self.scale[:, None, None] for im in images]


def test_nothing_traceable_is_one_clear_error():
    with pytest.raises(InputError, match="nor any submodule"):
        idapgraph.compress(NoParts(), (_images(0),), flops=0.5)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=96, max_size=96, box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10)
    return m.eval()


def test_detector_on_the_fx_route(detector):
    """torchvision's Faster R-CNN does not trace (NMS, a loop over images): its backbone+FPN,
    RPN head (called with the FPN's levels as a list: its conv shared by the levels) and box head
    are compressed, the rest stays, the target holds for the whole model."""
    args = ([torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))],)
    r = idapgraph.compress(detector, args, flops=0.5, method="magnitude", heal="none")
    rep = r.report
    assert rep.reached and rep.flops_ratio <= 0.5 + 1e-9
    assert {p["module"] for p in rep.parts} == {"backbone", "rpn.head", "roi_heads.box_head"}
    assert all(p["flops_after"] < p["flops_before"] for p in rep.parts)
    why = {f["layer"]: f["reason"] for f in rep.frozen if f["source"] == "module"}
    assert "nothing prunable" in why["roi_heads.box_predictor"]
    zero = idapgraph.apply_plan(detector, r.plan, args, mode="zero")
    want, got = torch_out(zero, args), torch_out(r.model, args)
    assert [w.shape for w in want] == [g.shape for g in got] and want[0].shape[0] == 10
    # equivalence part by part (random weights score every box alike, so the boxes NMS keeps
    # from the whole model reorder on float noise); the FPN's outputs keep their 256 channels
    x, rois = torch.rand(1, 3, 96, 96), torch.rand(20, 256, 7, 7)
    with torch.no_grad():
        a, b = zero.backbone(x), r.model.backbone(x)
        assert all(b[k].shape[1] == 256 for k in b)
        assert max(rel_err(a[k].numpy(), b[k].numpy()) for k in a) < 1e-5
        levels = list(a.values())
        a, b = zero.rpn.head(levels), r.model.rpn.head(levels)
        assert [len(v) for v in b] == [len(levels)] * 2  # (objectness, boxes) per level
        assert max(rel_err(u.numpy(), v.numpy()) for u, v in zip(a[0] + a[1], b[0] + b[1])) < 1e-5
        a, b = zero.roi_heads.box_head(rois), r.model.roi_heads.box_head(rois)
        assert rel_err(a.numpy(), b.numpy()) < 1e-5


def _part_calls(model, names, args) -> dict:
    """Each named submodule's arguments on its first call in ``model(*args)``."""
    calls = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: calls.setdefault(n, a)) for n in names]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _leaves(out) -> list[np.ndarray]:
    from torch.utils._pytree import tree_leaves

    return [t.detach().numpy() for t in tree_leaves(out)]


DETECTORS = {  # name -> the keyword arguments that keep it small
    "ssdlite320_mobilenet_v3_large": {},
    "retinanet_resnet50_fpn": {"min_size": 64, "max_size": 64},
    "maskrcnn_resnet50_fpn": {"min_size": 64, "max_size": 64, "rpn_post_nms_top_n_test": 20,
                              "box_score_thresh": 0.0, "box_detections_per_img": 10},
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_part_of_other_detectors_equals_its_zeroed_original(name):
    """SSDlite (its heads: nothing prunable, every conv writes a part output), RetinaNet (one
    head over the FPN's levels as a list) and Mask R-CNN (RPN, box and mask heads): the
    compressed model runs with the original's output structure, and every part, fed what it
    is fed in the zeroed original, gives the zeroed original's outputs."""
    torch.manual_seed(0)
    m = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
                                                    **DETECTORS[name]).eval()
    args = ([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))],)
    r = idapgraph.compress(m, args, flops=0.5, method="random", heal="none")
    assert r.report.backend == "fx-parts" and r.report.reached
    names = [p["module"] for p in r.report.parts]
    assert "backbone" in names and all(p["flops_after"] < p["flops_before"]
                                       for p in r.report.parts)
    zero = idapgraph.apply_plan(m, r.plan, args, mode="zero")
    with torch.no_grad():
        assert {k for k in r.model(*args)[0]} == {k for k in m(*args)[0]}
        for part, call in _part_calls(zero, names, args).items():
            want = _leaves(zero.get_submodule(part)(*call))
            got = _leaves(r.model.get_submodule(part)(*call))
            assert [w.shape for w in want] == [g.shape for g in got], part
            assert all(w.size for w in want), part  # (the mask head sees boxes)
            assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-5, part
