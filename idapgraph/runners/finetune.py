"""A small built-in fine-tuner for :func:`idapgraph.compress`'s ``finetune=``: knowledge
distillation from the previous step's model.

    from idapgraph import distill
    r = idapgraph.compress(model, x, flops=0.5, finetune=distill(loader, F.cross_entropy))

Per batch the loss is ``loss(student(x), y)`` (when a loss is given and the batch carries
targets) plus ``feature_weight · mean|student(x) − teacher(x)|`` (L1 between the two models'
outputs, the features both share whatever was pruned). BatchNorm statistics stay frozen (the
layers run in eval mode; dropout trains): a few hundred images re-estimate them worse than the
calibration-based healing already did.
"""

from __future__ import annotations

from typing import Any, Callable

from .distill import train_mode


def _split(batch, has_loss: bool) -> tuple[tuple, Any]:
    """(inputs, targets or None) of one batch: ``x``, ``(x, y)`` or ``((x1, x2), y)``."""
    import torch

    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)):
        if has_loss and len(batch) == 2:
            x, y = batch
            return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), y
        return tuple(batch), None
    raise TypeError(f"a batch must be a tensor or a (inputs, targets) pair, got {type(batch)}")


def _outputs(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return []


def distill(data, loss: Callable | None = None, *, epochs: int = 1, lr: float = 1e-3,
            feature_weight: float = 1.0, max_batches: int | None = None,
            seed: int = 0) -> Callable:
    """``finetune(student, teacher)`` for :func:`idapgraph.compress`: ``epochs`` passes of Adam
    (``lr``) over ``data`` (a DataLoader or any re-iterable of batches; at most ``max_batches``
    per epoch). ``loss(outputs, targets)``: the task loss (e.g. ``F.cross_entropy``); without
    it only the distillation term trains."""
    if epochs < 1 or lr <= 0 or feature_weight < 0:
        raise ValueError("need epochs >= 1, lr > 0 and feature_weight >= 0")

    def finetune(student, teacher):
        import torch

        torch.manual_seed(seed)
        teacher.eval()
        train_mode(student, "frozen")  # BatchNorm statistics stay as healed
        opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
        for _ in range(epochs):
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = _split(batch, loss is not None)
                out = student(*x)
                total = out.new_zeros(()) if isinstance(out, torch.Tensor) else 0.0
                if loss is not None and y is not None:
                    total = total + loss(out, y)
                if feature_weight:
                    with torch.no_grad():
                        ref = _outputs(teacher(*x))
                    for s, t in zip(_outputs(out), ref):
                        if s.shape == t.shape and s.is_floating_point():
                            total = total + feature_weight * (s - t).abs().mean()
                opt.zero_grad()
                total.backward()
                opt.step()
        student.eval()
        return student

    return finetune
