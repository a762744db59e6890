"""``idapgraph.finetune.distill``: a compressed model learns its original's outputs on
unlabelled inputs (KD loss), to a step budget; the teacher is never changed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import idapgraph
from idapgraph.finetune import distill, flip_crop


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def _kd(student, teacher, x) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x), -1), F.log_softmax(teacher(x), -1),
                              reduction="batchmean", log_target=True))


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = _Net().eval()
    x = torch.randn(256, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = idapgraph.compress(copy.deepcopy(teacher), (x[:1],), flops=0.4, calib=x[:64],
                                   heal="none").model
    return teacher, small, x


def test_distill_brings_the_student_towards_the_teacher(pair):
    teacher, small, x = pair
    student = copy.deepcopy(small)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    held_out = torch.randn(128, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = _kd(student, teacher, held_out)
    hist = distill(student, teacher, x, steps=150, batch=32, lr=0.05, augment=flip_crop(2),
                   evaluate=lambda m: _kd(m, teacher, held_out))
    after = _kd(student, teacher, held_out)
    assert hist.steps == 150 and hist.final == pytest.approx(after)
    assert after < 0.5 * before, (before, after)
    assert not student.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_batchnorm_statistics_follow_bn_mode(pair, bn):
    """``bn="frozen"`` keeps the healed running statistics; ``"train"`` (default) updates them."""
    teacher, small, x = pair
    student = copy.deepcopy(small)
    stats = lambda m: [b.running_mean.clone() for b in m.modules()  # noqa: E731
                       if isinstance(b, nn.BatchNorm2d)]
    before = stats(student)
    distill(student, teacher, x, steps=3, batch=16, bn=bn)
    same = all(torch.equal(a, b) for a, b in zip(before, stats(student)))
    assert before and same == (bn == "frozen")


def test_distill_is_reproducible_with_a_step_budget(pair):
    teacher, small, x = pair
    a, b = copy.deepcopy(small), copy.deepcopy(small)
    for s in (a, b):
        distill(s, teacher, x, steps=5, batch=16, augment=flip_crop())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_flip_crop_keeps_shape_and_content_scale():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = flip_crop(0)(x)  # no padding: only flips
    assert y.shape == x.shape
    assert all(torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1)) for i in range(2))


@pytest.mark.parametrize("bad", [{"seconds": 0}, {"steps": 0}, {"batch": 0, "steps": 1},
                                 {"loss": "l7", "steps": 1}, {"bn": "fused", "steps": 1}])
def test_distill_rejects_bad_arguments(pair, bad):
    teacher, small, x = pair
    with pytest.raises(ValueError):
        distill(copy.deepcopy(small), teacher, x, **bad)
