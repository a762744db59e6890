"""Distillation of a compressed torch model from its original on unlabelled inputs, to a time
budget: the public :func:`idapgraph.finetune.distill`.

Per batch the student matches the teacher's softened class distribution (Hinton et al.'s KD
loss, ``T² · KL(softmax(t/T) ‖ softmax(s/T))``) or, for outputs that are not class scores
(``loss="mse"``), its outputs. SGD with Nesterov momentum, the learning rate on a cosine over
the budget (time, or steps when ``steps`` is given, so a 2-minute and a 10-minute run both end
annealed). BatchNorm statistics follow the batches by default (``bn="train"``); ``bn="frozen"``
keeps them (eval mode, affine parameters training) -- on the least-squares-healed ResNet-56 at
0.3 FLOPs that diverged within 6 steps even at lr 0.002, so it is not the default. Evaluations at
``checkpoints`` are not counted against the budget.
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


def distill(student, teacher, inputs, *, seconds: float | None = 600.0,
            steps: int | None = None, batch: int = 64,
            lr: float = 0.005, momentum: float = 0.9, weight_decay: float = 5e-4,
            loss: str = "kd", temperature: float = 4.0, augment: Callable | None = None,
            bn: str = "train", optimizer: str = "sgd",
            evaluate: Callable | None = None, checkpoints=(), seed: int = 0) -> History:
    """Train ``student`` (in place) to reproduce ``teacher`` on ``inputs`` (a tensor or array
    of unlabelled inputs, first axis the samples) for ``seconds`` of training time, or for
    ``steps`` optimiser steps when given (reproducible), in random batches of ``batch``
    (``augment(x)`` applied to each). ``evaluate(student) -> float`` runs at each of
    ``checkpoints`` (seconds of training) and at the end. ``optimizer="adam"``: Adam instead
    of SGD (``momentum`` and ``nesterov`` unused) -- for students without BatchNorm, whose
    folded weights make SGD's steps explode (see :mod:`idapgraph.runners.distill_onnx`).
    Returns a :class:`History`; the student is left in eval mode."""
    import torch

    if steps is not None:
        seconds = None
    if (steps is None and not (seconds and seconds > 0)) or (steps is not None and steps < 1) \
            or batch < 1 or lr <= 0 or bn not in ("frozen", "train") \
            or optimizer not in ("sgd", "adam"):
        raise ValueError("need seconds > 0 or steps >= 1, batch >= 1, lr > 0, bn 'frozen' "
                         "or 'train' and optimizer 'sgd' or 'adam'")
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
    student.eval()
    if evaluate is not None:
        hist.final = float(evaluate(student))
    return hist
