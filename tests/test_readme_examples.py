"""README's worked examples run as written (so they stay true)."""

from __future__ import annotations

import contextlib
import io
import os
import re

import onnx
import torch
import torchvision

from helpers import export_onnx

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def example(marker: str) -> str:
    """The first ```python block after ``<!-- example:MARKER -->`` in README.md."""
    text = open(README, encoding="utf-8").read()
    m = re.search(rf"<!-- example:{re.escape(marker)} -->\s*```python\n(.*?)\n```", text, re.S)
    assert m, f"README has no example {marker!r}"
    return m.group(1)


def test_pass_api_example(tmp_path, monkeypatch):
    torch.manual_seed(0)
    proto = export_onnx(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 64, 64),))
    onnx.save(proto, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example("pass-api"), "README.md:pass-api", "exec"), ns)
    printed = out.getvalue()
    assert "frozen: " in printed and "model input" in printed and '"remove"' in printed
    small, plan, groups = ns["small"], ns["plan"], ns["groups"]
    import onnx_graphsurgeon as gs

    assert isinstance(small, onnx.ModelProto) and isinstance(ns["graph"], gs.Graph)
    assert ns["after"].flops < ns["before"].flops and ns["after"].params < ns["before"].params
    assert len(plan.remove[ns["first"]]) == 8  # the edit reached the model
    for key, units in plan.remove.items():
        g = groups.group(key)
        assert (g.n_units - len(units)) % 8 == 0 or key == ns["first"]
    assert (tmp_path / "model.onnx").read_bytes() == proto.SerializeToString()
