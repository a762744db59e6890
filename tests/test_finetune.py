"""Fine-tuning between pruning steps (torch): ``compress(finetune=, evaluate=)`` and the built-in
distillation helper, on the CNN trained here on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import idapgraph
from helpers import export_onnx
from idapgraph import distill
from mnist_cnn import ResNetMini, accuracy, calibration, load_mnist, trained

X = (torch.randn(1, 1, 28, 28),)


def loader(n: int = 2048, batch: int = 64, seed: int = 2):
    """Training images (not the test images ``accuracy`` uses), with labels."""
    x_tr, y_tr, _, _ = load_mnist()
    idx = np.random.default_rng(seed).choice(len(x_tr), n, replace=False)
    xs, ys = torch.from_numpy(x_tr[idx]), torch.from_numpy(y_tr[idx])
    return [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, n, batch)]


def test_distillation_recovers_accuracy():
    """Magnitude pruning to half the FLOPs without healing collapses the CNN; two steps each
    followed by one epoch of distillation on 2,048 training images bring it back."""
    model, cal = trained(), calibration()
    plain = idapgraph.compress(model, X, flops=0.5, method="magnitude", heal="none", calib=cal)
    tuned = idapgraph.compress(model, X, flops=0.5, method="magnitude", heal="none", calib=cal,
                               finetune=distill(loader(), F.cross_entropy), evaluate=accuracy,
                               finetune_steps=2)
    rep = tuned.report
    steps = rep.pipeline
    assert [s["stage"] for s in steps] == ["filters", "filters"]
    assert steps[0]["flops"] > steps[1]["flops"] == rep.flops_after
    assert rep.flops_ratio <= 0.5 + 1e-9 and rep.reached
    assert rep.flops_before == plain.report.flops_before
    acc_plain, acc_tuned = accuracy(plain.model), accuracy(tuned.model)
    print(f"magnitude 0.5 FLOPs: {acc_plain:.4f} without, {acc_tuned:.4f} with fine-tuning")
    assert steps[-1]["metric"] == pytest.approx(acc_tuned)
    assert acc_tuned >= acc_plain + 0.3, (acc_plain, acc_tuned)
    assert steps[-1]["error"] < 1.0


def test_finetune_gets_the_previous_step_as_teacher():
    torch.manual_seed(0)
    model, cal = ResNetMini(8).eval(), torch.randn(32, 1, 28, 28)
    seen = []

    def finetune(student, teacher):
        seen.append((idapgraph.analyze(student, X).cost.flops,
                     idapgraph.analyze(teacher, X).cost.flops))
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(1.0)
        return None  # trained in place

    r = idapgraph.compress(model, X, flops=0.6, blocks=1, method="magnitude", heal="none",
                           calib=cal, finetune=finetune, finetune_steps=3)
    assert len(seen) == 4 and [s["stage"] for s in r.report.pipeline] == ["filters"] * 3 + ["blocks"]
    base = r.report.flops_before
    assert seen[0][1] == base  # the first teacher is the original
    for (student, _), (_, next_teacher) in zip(seen, seen[1:]):
        assert next_teacher == student  # later teachers: the previous step's model
    assert all(s < t for s, t in seen)
    assert r.report.blocks_bypassed and r.report.flops_after == seen[-1][0]


def test_finetune_needs_torch_and_no_plan():
    model, cal = ResNetMini(8).eval(), torch.randn(8, 1, 28, 28).numpy()
    proto = export_onnx(model, X)
    with pytest.raises(idapgraph.InputError, match="torch module"):
        idapgraph.compress(proto, flops=0.5, calib=cal, finetune=lambda s, t: s)
    with pytest.raises(idapgraph.InputError, match="plan"):
        idapgraph.compress(model, X, plan=idapgraph.Plan(), finetune=lambda s, t: s)
