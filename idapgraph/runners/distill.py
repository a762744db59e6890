"""Distillation of a compressed torch model from its original on unlabelled inputs, to a time
budget: the public :func:`idapgraph.finetune.distill`.

Per batch the student matches the teacher's softened class distribution (Hinton et al.'s KD
loss, ``T² · KL(softmax(t/T) ‖ softmax(s/T))``) or, for outputs that are not class scores
(``loss="mse"``), its outputs. SGD with Nesterov momentum, the learning rate on a cosine over
the budget (time, or steps when ``steps`` is given, so a 2-minute and a 10-minute run both end
annealed). BatchNorm statistics follow the batches by default (``bn="train"``); ``bn="frozen"``
keeps them (eval mode, affine parameters training) -- on the least-squares-healed ResNet-56 at
0.3 FLOPs that diverged within 6 steps even at lr 0.002, so it is not the default. Evaluations at
``checkpoints`` are not counted against the budget. With ``holdout`` (unlabelled inputs kept out
of training) the student ends in its state of lowest distillation loss on them, measured at a few
points of the budget: early stopping without labels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class History:
    """What a distillation run did: steps taken, seconds trained, ``(seconds, metric)`` at
    each checkpoint and the final metric (``None`` without ``evaluate``)."""

    steps: int = 0
    seconds: float = 0.0
    checkpoints: list[tuple[float, float]] = field(default_factory=list)
    final: float | None = None
    holdout: list[tuple[float, float]] = field(default_factory=list)  # (seconds, held-out loss)
    kept: float | None = None  # seconds of training of the state returned (with ``holdout``)


def flip_crop(pad: int = 4) -> Callable:
    """The standard CIFAR augmentation on an NCHW batch: a random crop of the zero-padded image
    (``pad`` pixels each side) and a random horizontal flip, per image."""
    import torch

    def augment(x):
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,))
        dx = torch.randint(0, 2 * pad + 1, (n,))
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        flip = torch.rand(n) < 0.5
        out[flip] = out[flip].flip(-1)
        return out

    return augment


def train_mode(model, bn: str) -> None:
    """Train mode, BatchNorm layers back in eval mode unless ``bn == "train"``."""
    import torch

    model.train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _loss(kind: str, temperature: float) -> Callable:
    import torch.nn.functional as F

    if kind == "mse":
        return lambda s, t: F.mse_loss(s, t)
    if kind != "kd":
        raise ValueError(f"loss must be 'kd' or 'mse', got {kind!r}")
    T = temperature
    return lambda s, t: F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1),
                                 reduction="batchmean", log_target=True) * T * T


class _Best:
    """The student's state with the lowest distillation loss on held-out inputs (the
    teacher's outputs on them computed once, no augmentation)."""

    def __init__(self, teacher, inputs, crit, batch: int) -> None:
        import torch

        x = torch.as_tensor(inputs)
        self.crit, self.loss, self.state, self.at = crit, math.inf, None, None
        with torch.no_grad():
            self.pairs = [(x[i:i + batch], teacher(x[i:i + batch]))
                          for i in range(0, len(x), batch)]

    def check(self, student, hist: History) -> None:
        import copy

        import torch

        student.eval()
        with torch.no_grad():
            total = sum(float(self.crit(student(xb), t)) * len(xb) for xb, t in self.pairs)
        loss = total / sum(len(xb) for xb, _ in self.pairs)
        hist.holdout.append((hist.seconds, loss))
        if loss < self.loss:
            self.loss, self.at = loss, hist.seconds
            self.state = copy.deepcopy(student.state_dict())

    def restore(self, student, hist: History) -> None:
        if self.state is not None:
            student.load_state_dict(self.state)
            hist.kept = self.at


def distill(student, teacher, inputs, *, seconds: float | None = 600.0,
            steps: int | None = None, batch: int = 64,
            lr: float = 0.005, momentum: float = 0.9, weight_decay: float = 5e-4,
            loss: str = "kd", temperature: float = 4.0, augment: Callable | None = None,
            bn: str = "train", optimizer: str = "sgd",
            evaluate: Callable | None = None, checkpoints=(), seed: int = 0,
            holdout=None, checks: int = 10) -> History:
    """Train ``student`` (in place) to reproduce ``teacher`` on ``inputs`` (a tensor or array
    of unlabelled inputs, first axis the samples) for ``seconds`` of training time, or for
    ``steps`` optimiser steps when given (reproducible), in random batches of ``batch``
    (``augment(x)`` applied to each). ``evaluate(student) -> float`` runs at each of
    ``checkpoints`` (seconds of training) and at the end. ``optimizer="adam"``: Adam instead
    of SGD (``momentum`` and ``nesterov`` unused) -- for students without BatchNorm, whose
    folded weights make SGD's steps explode (see :mod:`idapgraph.runners.distill_onnx`).
    ``holdout``: unlabelled inputs kept out of training; the distillation loss on them is
    measured before training, at ``checks`` evenly spaced points of the budget and at the end
    (not counted against it), and the student ends in the state where it was lowest
    (``History.holdout``, ``History.kept``). Returns a :class:`History`; the student is left in
    eval mode."""
    import torch

    if steps is not None:
        seconds = None
    if (steps is None and not (seconds and seconds > 0)) or (steps is not None and steps < 1) \
            or batch < 1 or lr <= 0 or bn not in ("frozen", "train") \
            or optimizer not in ("sgd", "adam") or checks < 1 or \
            (holdout is not None and len(holdout) == 0):
        raise ValueError("need seconds > 0 or steps >= 1, batch >= 1, lr > 0, bn 'frozen' "
                         "or 'train', optimizer 'sgd' or 'adam', checks >= 1 and a non-empty "
                         "holdout")
    x = torch.as_tensor(inputs)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    crit, hist = _loss(loss, temperature), History()
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" \
        else torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                             weight_decay=weight_decay)
    pending = sorted(c for c in checkpoints if 0 < c < (seconds or math.inf))
    best = _Best(teacher, holdout, crit, batch) if holdout is not None else None
    if best is not None:
        best.check(student, hist)
    marks = [k / checks for k in range(1, checks)]

    def progress() -> float:
        return hist.steps / steps if steps is not None else hist.seconds / seconds

    train_mode(student, bn)
    while progress() < 1:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress()))
        xb = x[torch.randint(0, len(x), (batch,), generator=gen)]
        xb = augment(xb) if augment else xb
        with torch.no_grad():
            target = teacher(xb)
        step_loss = crit(student(xb), target)
        opt.zero_grad()
        step_loss.backward()
        opt.step()
        hist.steps += 1
        hist.seconds += time.perf_counter() - t0
        if pending and hist.seconds >= pending[0] and evaluate is not None:
            pending.pop(0)
            student.eval()
            hist.checkpoints.append((hist.seconds, float(evaluate(student))))
            train_mode(student, bn)
        if best is not None and marks and progress() >= marks[0]:
            marks = [m for m in marks if m > progress()]
            best.check(student, hist)
            train_mode(student, bn)
    student.eval()
    if best is not None:
        best.check(student, hist)
        best.restore(student, hist)
    if evaluate is not None:
        hist.final = float(evaluate(student))
    return hist
