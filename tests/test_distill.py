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


def test_holdout_keeps_the_state_with_the_lowest_held_out_loss(pair):
    """A learning rate far too high: the held-out loss rises after a while; with ``holdout``
    the student ends in its best measured state (before training, at the ten checks, or at the
    end), and ``History`` says which."""
    teacher, small, x = pair
    held = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    free = copy.deepcopy(small)
    distill(free, teacher, x, steps=40, batch=16, lr=50.0)
    student = copy.deepcopy(small)
    hist = distill(student, teacher, x, steps=40, batch=16, lr=50.0, holdout=held)
    assert len(hist.holdout) == 11 and hist.steps == 40
    losses = [v for _, v in hist.holdout]
    best = min(range(len(losses)), key=lambda i: losses[i] if losses[i] == losses[i] else 1e30)
    assert hist.kept == hist.holdout[best][0]
    kd = _kd_t(student, teacher, held)
    assert kd == pytest.approx(losses[best], rel=1e-4)
    assert kd < 0.01 * _kd_t(free, teacher, held)  # the run without it ends far worse


def _kd_t(student, teacher, x, T: float = 4.0) -> float:
    """The distillation loss (KD at temperature ``T``, as ``distill`` measures it)."""
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x) / T, -1), F.log_softmax(teacher(x) / T, -1),
                              reduction="batchmean", log_target=True)) * T * T


def test_flip_crop_keeps_shape_and_content_scale():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = flip_crop(0)(x)  # no padding: only flips
    assert y.shape == x.shape
    assert all(torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1)) for i in range(2))


@pytest.mark.parametrize("bad", [{"seconds": 0}, {"steps": 0}, {"batch": 0, "steps": 1},
                                 {"loss": "l7", "steps": 1}, {"bn": "fused", "steps": 1},
                                 {"optimizer": "rmsprop", "steps": 1},
                                 {"steps": 1, "checks": 0},
                                 {"steps": 1, "holdout": torch.zeros(0, 3, 16, 16)}])
def test_distill_rejects_bad_arguments(pair, bad):
    teacher, small, x = pair
    with pytest.raises(ValueError):
        distill(copy.deepcopy(small), teacher, x, **bad)


@pytest.fixture(scope="module")
def onnx_pair(pair):
    """The pair as ONNX files' models: the teacher exported with a symbolic batch, the student
    compressed from that export (the ONNX route)."""
    from helpers import export_onnx

    teacher, _, x = pair
    proto = export_onnx(teacher, (x[:1],), input_names=["img"], output_names=["logits"],
                        dynamic_axes={"img": {0: "n"}, "logits": {0: "n"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = idapgraph.compress(proto, flops=0.4, calib=x[:64].numpy(), heal="none").model
    return proto, small, x.numpy()


def test_distill_onnx_returns_a_checked_onnx_student_closer_to_the_teacher(onnx_pair):
    """ONNX in, ONNX out: the names, symbolic batch and opset of the student stay; the result
    passes the full checker, runs in onnxruntime at another batch size, and its outputs on
    held-out inputs are nearer the teacher's than before; the inputs are not modified."""
    import numpy as np
    import onnx

    from helpers import onnx_out
    from idapgraph.finetune import distill_onnx

    teacher, small, x = onnx_pair
    frozen = small.SerializeToString()
    held = {"img": np.random.default_rng(1).standard_normal((96, 3, 16, 16), dtype=np.float32)}
    kd = lambda m: float(np.mean((onnx_out(m, held)[0] - onnx_out(teacher, held)[0]) ** 2))  # noqa: E731
    out, hist = distill_onnx(small, teacher, x, steps=60, batch=32)
    onnx.checker.check_model(out, full_check=True)
    assert hist.steps == 60 and small.SerializeToString() == frozen
    assert [i.name for i in out.graph.input] == ["img"]
    assert [o.name for o in out.graph.output] == ["logits"]
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    assert out.opset_import[0].version == small.opset_import[0].version
    assert onnx_out(out, held)[0].shape == (96, 10)
    assert kd(out) < 0.5 * kd(small), (kd(small), kd(out))


def test_distill_onnx_errors_are_one_clear_line(onnx_pair, monkeypatch, tmp_path):
    """A model with two inputs, a path that is not ONNX, and onnx2torch missing: InputError."""
    import builtins

    import onnx

    from idapgraph.errors import InputError
    from idapgraph.finetune import distill_onnx

    teacher, small, x = onnx_pair
    two = onnx.ModelProto()
    two.CopyFrom(small)
    two.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT,
                                                              [1]))
    with pytest.raises(InputError, match="one input; this one has 2"):
        distill_onnx(two, teacher, x, steps=1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError):
        distill_onnx(str(bad), teacher, x, steps=1)
    real = builtins.__import__

    def no_onnx2torch(name, *a, **k):
        if name.startswith("onnx2torch"):
            raise ImportError(name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx2torch)
    with pytest.raises(InputError, match="pip install onnx2torch"):
        distill_onnx(small, teacher, x, steps=1)


def test_cli_distill_writes_a_checked_model_and_refuses_bad_paths(onnx_pair, tmp_path, capsys):
    """``idapgraph distill`` (ONNX in, ONNX out): a checked file at -o, the inputs untouched;
    output = input or teacher, and a missing data file: one error line, exit 2, no file."""
    import numpy as np
    import onnx

    from idapgraph.cli import main

    teacher, small, x = onnx_pair
    t_path, s_path, data = tmp_path / "t.onnx", tmp_path / "s.onnx", tmp_path / "x.npz"
    onnx.save(teacher, t_path)
    onnx.save(small, s_path)
    np.savez(data, img=x)
    before = s_path.read_bytes()
    out = tmp_path / "tuned.onnx"
    args = [str(s_path), "--teacher", str(t_path), "--data", str(data), "--steps", "3",
            "--flip-crop", "2"]
    assert main(["distill", *args, "-o", str(out)]) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert s_path.read_bytes() == before and "distilled 3 steps" in capsys.readouterr().out
    for bad, why in ((s_path, "is the input"), (t_path, "is the teacher")):
        assert main(["distill", *args, "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    missing = [a if a != str(data) else str(tmp_path / "none.npz") for a in args]
    assert main(["distill", *missing, "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no such calibration file" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and s_path.read_bytes() == before
