"""CLI contract: exit 0 on success, 2 with one stderr line on bad input (no output file, input
untouched), JSON report on request."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from helpers import export_onnx

CLI = [sys.executable, "-m", "idapgraph"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    proto = export_onnx(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 64, 64),))
    p = d / "r18.onnx"
    p.write_bytes(proto.SerializeToString())
    return p


def run(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def digest(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_compress_ok_json(model_path, tmp_path):
    out = tmp_path / "small.onnx"
    before = digest(model_path)
    r = run("compress", model_path, "-o", out, "--flops", "0.5", "--json", "--plan-out",
            tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["flops_ratio"] <= 0.5 and rep["params_after"] < rep["params_before"]
    assert out.exists() and digest(model_path) == before
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["version"] == 1 and plan["remove"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_compress_human_output(model_path, tmp_path):
    r = run("compress", model_path, "-o", tmp_path / "s.onnx", "--params", "0.7")
    assert r.returncode == 0, r.stderr
    assert "FLOPs" in r.stdout and "params" in r.stdout


def _bad(tmp_path, model_path, name):
    """Return (args, input path) for each kind of bad input."""
    out = tmp_path / "out.onnx"
    if name == "missing":
        return ["compress", tmp_path / "nope.onnx", "-o", out, "--flops", "0.5"], None
    if name == "empty":
        p = tmp_path / "empty.onnx"
        p.write_bytes(b"")
    elif name == "garbage":
        p = tmp_path / "garbage.onnx"
        p.write_bytes(os.urandom(4096))
    elif name == "text":
        p = tmp_path / "text.onnx"
        p.write_text("this is not a model\n")
    elif name == "truncated":
        p = tmp_path / "trunc.onnx"
        p.write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    else:
        p = tmp_path / "copy.onnx"
        p.write_bytes(model_path.read_bytes())
    if name == "same_output":
        return ["compress", p, "-o", p, "--flops", "0.5"], p
    if name == "ratio_zero":
        return ["compress", p, "-o", out, "--flops", "0"], p
    if name == "ratio_big":
        return ["compress", p, "-o", out, "--flops", "1.5"], p
    if name == "ratio_nan":
        return ["compress", p, "-o", out, "--params", "abc"], p
    if name == "no_target":
        return ["compress", p, "-o", out], p
    if name == "bad_method":
        return ["compress", p, "-o", out, "--flops", "0.5", "--method", "nope"], p
    if name == "no_out_dir":
        return ["compress", p, "-o", tmp_path / "nodir" / "x.onnx", "--flops", "0.5"], p
    if name == "no_output":
        return ["compress", p, "--flops", "0.5"], p
    if name in ("plan_garbage", "plan_missing", "plan_other_model"):
        plan = tmp_path / "plan.json"
        if name == "plan_garbage":
            plan.write_text("{not json")
        elif name == "plan_other_model":  # a plan whose group does not exist in this model
            plan.write_text(json.dumps({"version": 1, "remove": {"w999.out": [0]},
                                        "units": {"w999.out": 4}}))
        return ["compress", p, "-o", out, "--plan-in", plan], p
    return ["compress", p, "-o", out, "--flops", "0.5"], p


BAD = ["missing", "empty", "garbage", "text", "truncated", "same_output", "ratio_zero",
       "ratio_big", "ratio_nan", "no_target", "bad_method", "no_out_dir", "no_output",
       "plan_garbage", "plan_missing", "plan_other_model"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_exit_2(name, model_path, tmp_path):
    args, inp = _bad(tmp_path, model_path, name)
    before = digest(inp) if inp else None
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.onnx").exists()
    if inp:
        assert digest(inp) == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_analyze_json(model_path):
    r = run("analyze", model_path, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["groups"] and rep["flops"] > 0
    assert {f["reason"] for f in rep["frozen"]} == {"model input", "model output"}


def test_plan_round_trip_and_dry_run(model_path, tmp_path):
    """--plan-out writes the plan, --plan-in applies it (no target needed) to the same result;
    --dry-run reports without writing a model."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r = run("compress", model_path, "-o", a, "--flops", "0.6", "--heal", "none", "--json",
            "--plan-out", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    r2 = run("compress", model_path, "-o", b, "--plan-in", tmp_path / "plan.json", "--heal",
             "none", "--json")
    assert r2.returncode == 0, r2.stderr
    ra, rb = json.loads(r.stdout), json.loads(r2.stdout)
    assert (ra["flops_after"], ra["params_after"]) == (rb["flops_after"], rb["params_after"])
    assert a.read_bytes() == b.read_bytes()
    r3 = run("compress", model_path, "--flops", "0.6", "--dry-run", "--json")
    assert r3.returncode == 0, r3.stderr
    rep = json.loads(r3.stdout)
    assert rep["output"] is None and rep["size_after"] < rep["size_before"]
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx", "plan.json"]
