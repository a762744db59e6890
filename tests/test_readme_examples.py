"""README's code blocks run as written (so they stay true): every fenced block carries an
``<!-- example:NAME -->`` marker and a test here runs it; the indented set-up commands are what
``.ci/run`` itself runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex

import numpy as np
import onnx
import pytest
import torch
import torchvision

from helpers import export_onnx

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
FENCED = re.compile(r"(?:<!-- example:([\w-]+) -->\s*)?```(\w+)\n(.*?)\n```", re.S)


def blocks() -> list[tuple[str | None, str, str]]:
    """(marker or None, language, code) of every fenced block of README.md."""
    return FENCED.findall(open(README, encoding="utf-8").read())


def example(marker: str) -> str:
    found = [code for m, _, code in blocks() if m == marker]
    assert found, f"README has no example {marker!r}"
    return found[0]


def test_every_fenced_block_is_a_run_example():
    names = [m for m, _, _ in blocks()]
    assert names and None not in names, "a README code block without an example marker"
    assert sorted(names) == sorted(RUN), (sorted(names), sorted(RUN))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding ``model.onnx`` (ResNet-18 at 32×32) and ``calib.npz`` (32 images)."""
    torch.manual_seed(0)
    proto = export_onnx(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 32, 32),))
    onnx.save(proto, tmp_path / "model.onnx")
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", **{proto.graph.input[0].name: x})
    monkeypatch.chdir(tmp_path)
    return tmp_path, proto


def test_cli_example(workdir, capsys):
    from idapgraph import cli

    tmp, proto = workdir
    lines = example("cli").splitlines()
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "idapgraph"
        assert cli.main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    again = json.loads(out[out.index("{\n"):out.rindex("\n}") + 2])
    assert again["flops_ratio"] <= 0.5 + 1e-3 and again["output"].endswith("again.onnx")
    assert "distilled 10 steps" in out
    onnx.checker.check_model(onnx.load(tmp / "tuned.onnx"), full_check=True)
    for f in ("small.onnx", "plan.json", "again.onnx"):
        assert (tmp / f).is_file()
    assert (tmp / "model.onnx").read_bytes() == proto.SerializeToString()


def run_example(marker: str) -> tuple[dict, str]:
    """The names the example ``marker`` defines, and what it printed."""
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example(marker), f"README.md:{marker}", "exec"), ns)
    return ns, out.getvalue()


def test_python_api_example(workdir):
    tmp, proto = workdir
    ns, printed = run_example("python-api")
    assert ns["res"].report.flops_ratio <= 0.5 + 1e-3 and ns["res"].report.reached
    assert ns["small"].report.params_ratio <= 0.6 + 1e-3
    assert "fc" in " ".join(f["layer"] for f in ns["small"].report.frozen)
    onnx.checker.check_model(onnx.load(tmp / "small.onnx"), full_check=True)
    assert ns["d"].totals()["flops_ratio"] < 1 and isinstance(ns["zeroed"], onnx.ModelProto)
    assert "torch.Size([1, 10])" in printed


def test_pass_api_example(workdir):
    tmp, proto = workdir
    ns, printed = run_example("pass-api")
    assert "frozen: " in printed and "model input" in printed and '"remove"' in printed
    small, plan, groups = ns["small"], ns["plan"], ns["groups"]
    import onnx_graphsurgeon as gs

    assert isinstance(small, onnx.ModelProto) and isinstance(ns["graph"], gs.Graph)
    assert ns["after"].flops < ns["before"].flops and ns["after"].params < ns["before"].params
    assert len(plan.remove[ns["first"]]) == 8  # the edit reached the model
    for key, units in plan.remove.items():
        g = groups.group(key)
        assert (g.n_units - len(units)) % 8 == 0 or key == ns["first"]
    assert (tmp / "model.onnx").read_bytes() == proto.SerializeToString()
    onnx.checker.check_model(small, full_check=True)
    from idapgraph.emit.validate import example_feeds, run_onnx

    assert run_onnx(small, example_feeds(proto))[0].shape == (1, 1000)


RUN = {"cli": test_cli_example, "python-api": test_python_api_example,
       "pass-api": test_pass_api_example}
