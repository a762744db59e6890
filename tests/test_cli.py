"""CLI contract: exit 0 on success, 2 with one stderr line on bad input (no output file, input
untouched), JSON report on request."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

import schemas
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
            tmp_path / "plan.json", "--bench")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)  # stdout is the JSON alone
    schemas.check(rep, schemas.COMPRESS)
    assert rep["flops_ratio"] <= 0.5 and rep["params_after"] < rep["params_before"]
    assert rep["output"] == str(out) and rep["size_after"] == out.stat().st_size
    lat = rep["latency"]
    assert lat["before"]["runs"] >= 20 and lat["before"]["threads"] == 1
    assert lat["speedup"] == pytest.approx(lat["before"]["median_ms"] / lat["after"]["median_ms"])
    # human output (the table, warnings) went to stderr
    assert "FLOPs" in r.stderr and "latency (ms)" in r.stderr and "warning:" in r.stderr
    assert rep["layers"] and all(x["flops_after"] <= x["flops_before"] for x in rep["layers"])
    assert out.exists() and digest(model_path) == before
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["version"] == 1 and plan["remove"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_compress_human_output(model_path, tmp_path):
    r = run("compress", model_path, "-o", tmp_path / "s.onnx", "--params", "0.7", "--method",
            "magnitude", "--heal", "none")
    assert r.returncode == 0, r.stderr
    for word in ("FLOPs", "params", "size on disk", "most-changed layers", "/layer", "wrote"):
        assert word in r.stdout, word
    assert "latency" not in r.stdout  # only with --bench
    # no progress bars when stderr is not a terminal: only the warning line
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == \
        [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]


def test_quiet(model_path, tmp_path):
    r = run("compress", model_path, "-o", tmp_path / "s.onnx", "--flops", "0.8", "--method",
            "magnitude", "--heal", "none", "--quiet")
    assert r.returncode == 0 and (r.stdout, r.stderr) == ("", ""), r.stderr
    assert (tmp_path / "s.onnx").exists()
    r = run("compress", model_path, "--dry-run", "--flops", "0.8", "--heal", "none", "--quiet",
            "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    schemas.check(json.loads(r.stdout), schemas.COMPRESS)  # warnings stay in the report
    assert json.loads(r.stdout)["warnings"]


def test_round_to_and_keep(model_path):
    r = run("compress", model_path, "--dry-run", "--flops", "0.6", "--method", "magnitude",
            "--heal", "none", "--round-to", "16", "--keep", "/layer1/*", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    schemas.check(rep, schemas.COMPRESS)
    assert rep["round_to"] == 16 and rep["keep"] == ["/layer1/*"]
    assert rep["reached"] and rep["layers"]
    for x in rep["layers"]:
        assert x["channels_after"] == x["channels_before"] or \
            (x["channels_after"] % 16 == 0 and x["channels_after"] >= 16), x
        assert not x["layer"].startswith("/layer1/"), x  # kept layers keep their channels
    assert all(n.startswith("/layer1/") for n in rep["kept_nodes"]) and rep["kept_nodes"]
    kept = {f["layer"] for f in rep["frozen"] if f["reason"] == "kept by --keep"}
    assert {n for n in rep["kept_nodes"] if n.endswith("/Conv")} <= kept
    # the plain-text fallback (no rich) says the same things
    from idapgraph import cli_view as report_view

    for have_rich in (True, False):
        buf = io.StringIO()
        report_view.HAVE_RICH, saved = have_rich, report_view.HAVE_RICH
        try:
            report_view.print_compress(rep, buf)
        finally:
            report_view.HAVE_RICH = saved
        text = buf.getvalue()
        top = min(rep["layers"], key=lambda x: x["flops_after"] - x["flops_before"])["layer"]
        for word in ("size on disk", "most-changed layers", top,
                     "rounded to 16", "kept by --keep", "dry run"):
            assert word in text, (have_rich, word)


def _tiny(nodes, inits=(), domains=()) -> onnx.ModelProto:
    """A 1x3x8x8 -> 1x4x8x8 graph of ``nodes`` (reading ``x``, writing ``y``)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    g = helper.make_graph(nodes, "tiny", [x], [y], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]
                             + [helper.make_opsetid(d, 1) for d in domains])


def _conv_w(name="w"):
    return numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), name)


def _bad_model(name: str) -> bytes:
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    if name == "cycle":  # a <- r2(b), b <- r1(a): no topological order
        m = _tiny([conv, helper.make_node("Add", ["c", "b"], ["a"], name="r1"),
                   helper.make_node("Relu", ["a"], ["b"], name="r2"),
                   helper.make_node("Relu", ["a"], ["y"], name="out")], [_conv_w()])
    elif name == "unknown_domain":
        m = _tiny([conv, helper.make_node("Foo", ["c"], ["y"], name="foo", domain="com.example")],
                  [_conv_w()], domains=["com.example"])
    elif name == "external_escape":  # a weight stored "outside" the model's folder
        m = _tiny([conv, helper.make_node("Relu", ["c"], ["y"], name="relu")], [_conv_w()])
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", "../outside.bin"
    return m.SerializeToString()


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
    elif name in ("cycle", "unknown_domain", "external_escape"):
        (tmp_path / "m").mkdir()
        p = tmp_path / "m" / f"{name}.onnx"
        p.write_bytes(_bad_model(name))
        if name == "external_escape":  # the file it names exists: it must not even be read
            (tmp_path / "outside.bin").write_bytes(np.ones(108, np.float32).tobytes())
    else:
        p = tmp_path / "copy.onnx"
        p.write_bytes(model_path.read_bytes())
    if name == "same_output":
        return ["compress", p, "-o", p, "--flops", "0.5"], p
    if name == "same_output_spelled":  # another spelling of the same path
        return ["compress", p, "-o", tmp_path / ".." / tmp_path.name / "." / p.name,
                "--flops", "0.5"], p
    if name == "same_output_symlink":  # the output is a link to the input
        (tmp_path / "link.onnx").symlink_to(p)
        return ["compress", p, "-o", tmp_path / "link.onnx", "--flops", "0.5"], p
    if name == "same_output_via_link_input":  # the input is a link, the output its target
        (tmp_path / "link.onnx").symlink_to(p)
        return ["compress", tmp_path / "link.onnx", "-o", p, "--flops", "0.5"], p
    if name == "ratio_zero":
        return ["compress", p, "-o", out, "--flops", "0"], p
    if name == "ratio_big":
        return ["compress", p, "-o", out, "--flops", "1.5"], p
    if name == "ratio_negative_params":
        return ["compress", p, "-o", out, "--params", "-0.5"], p
    if name == "ratio_nan":
        return ["compress", p, "-o", out, "--params", "abc"], p
    if name == "no_target":
        return ["compress", p, "-o", out], p
    if name == "bad_method":
        return ["compress", p, "-o", out, "--flops", "0.5", "--method", "nope"], p
    if name == "bad_round_to":
        return ["compress", p, "-o", out, "--flops", "0.5", "--round-to", "0"], p
    if name == "keep_matches_nothing":
        return ["compress", p, "-o", out, "--flops", "0.5", "--keep", "no/such/*"], p
    if name == "no_out_dir":
        return ["compress", p, "-o", tmp_path / "nodir" / "x.onnx", "--flops", "0.5"], p
    if name == "unwritable_out_dir":  # read-only for everyone, root included
        if os.geteuid() != 0:
            ro = tmp_path / "ro"
            ro.mkdir()
            ro.chmod(0o555)
            return ["compress", p, "-o", ro / "x.onnx", "--flops", "0.5"], p
        return ["compress", p, "-o", "/sys/idapgraph-test.onnx", "--flops", "0.5"], p
    if name == "unwritable_plan_out":
        return ["compress", p, "-o", out, "--flops", "0.5", "--plan-out",
                tmp_path / "nodir" / "plan.json"], p
    if name == "no_output":
        return ["compress", p, "--flops", "0.5"], p
    if name == "calib_not_npz":
        return ["compress", p, "-o", out, "--flops", "0.5", "--calib", model_path], p
    if name.startswith("calib_"):
        cal = tmp_path / "cal.npz"
        x = np.zeros((4, 3, 64, 64), np.float32)
        arrays = {"calib_names": {"a": x, "b": x}, "calib_shape": {"x": x[:, :, :32]},
                  "calib_rank": {"x": x[0]}, "calib_dtype": {"x": x.astype(np.int32)}}[name]
        np.savez(cal, **arrays)
        return ["compress", p, "-o", out, "--flops", "0.5", "--calib", cal], p
    if name in ("plan_garbage", "plan_missing", "plan_other_model", "plan_out_of_range",
                "plan_empties_group", "plan_bypass_unknown"):
        plan = tmp_path / "plan.json"
        if name == "plan_garbage":
            plan.write_text("{not json")
        elif name == "plan_other_model":  # a plan whose group does not exist in this model
            plan.write_text(json.dumps({"version": 1, "remove": {"w999.out": [0]},
                                        "units": {"w999.out": 4}}))
        elif name == "plan_out_of_range":  # w1.out: 64 channels of layer1.0.conv1
            plan.write_text(json.dumps({"version": 1, "remove": {"w1.out": [64]},
                                        "units": {"w1.out": 64}}))
        elif name == "plan_empties_group":
            plan.write_text(json.dumps({"version": 1, "remove": {"w1.out": list(range(64))},
                                        "units": {"w1.out": 64}}))
        elif name == "plan_bypass_unknown":
            plan.write_text(json.dumps({"version": 1, "remove": {}, "bypass": ["b99"]}))
        return ["compress", p, "-o", out, "--plan-in", plan], p
    return ["compress", p, "-o", out, "--flops", "0.5"], p


# each bad-input case and what its one line must say (the reason, not just any error)
SAYS = {"missing": "no such file", "empty": "empty file, not an ONNX model",
        "garbage": "not a valid ONNX model", "text": "not a valid ONNX model",
        "truncated": "not a valid ONNX model", "cycle": "topologically sorted",
        "unknown_domain": "com.example.Foo", "external_escape": "escapes the model's folder",
        "same_output": "is the input file", "same_output_spelled": "is the input file",
        "same_output_symlink": "is the input file", "same_output_via_link_input": "is the input file",
        "ratio_zero": "--flops: must be a fraction to keep in (0, 1], got 0",
        "ratio_big": "--flops: must be a fraction to keep in (0, 1], got 1.5",
        "ratio_negative_params": "--params: must be a fraction to keep in (0, 1], got -0.5",
        "ratio_nan": "--params: not a number: 'abc'", "no_target": "give a target",
        "bad_method": "unknown method 'nope'", "bad_round_to": "--round-to: must be >= 1",
        "keep_matches_nothing": "['no/such/*'] match no node", "no_out_dir": "nodir does not exist",
        "unwritable_out_dir": "is not writable", "unwritable_plan_out": "nodir does not exist",
        "no_output": "give an output file with -o", "calib_names": "lacks model input",
        "calib_shape": "has shape (4, 3, 32, 64)", "calib_rank": "has shape (3, 64, 64)",
        "calib_dtype": "has dtype int32", "calib_not_npz": "not a readable .npz file",
        "plan_garbage": "is not an idapgraph plan", "plan_missing": "cannot read plan",
        "plan_other_model": "'w999.out', which this model does not have",
        "plan_out_of_range": "removes unit 64 of group 'w1.out'",
        "plan_empties_group": "removes every unit of channel group 'w1.out'",
        "plan_bypass_unknown": "['b99'], which this model does not have"}
BAD = list(SAYS)


def _files(root) -> set:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_exit_2(name, model_path, tmp_path):
    args, inp = _bad(tmp_path, model_path, name)
    before = digest(inp) if inp else None
    files = _files(tmp_path)
    # every output path a case names (-o, --plan-out), the root fallback included
    at_stake = [tmp_path / "out.onnx", tmp_path / "nodir" / "x.onnx", tmp_path / "ro" / "x.onnx",
                tmp_path / "nodir" / "plan.json", "/sys/idapgraph-test.onnx"]
    r = run(*args, cwd=tmp_path)  # in tmp_path, so a default output path would be seen too
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("idapgraph: error: "), lines
    assert SAYS[name] in lines[0], lines[0]
    assert not [p for p in at_stake if os.path.lexists(p)]
    assert _files(tmp_path) == files, "a bad input wrote a file"  # no output, plan or .tmp
    if inp:
        assert digest(inp) == before


def test_analyze_json(model_path, tmp_path):
    r = run("analyze", model_path, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    schemas.check(rep, schemas.ANALYZE)
    assert rep["groups"] and rep["flops"] > 0
    assert {f["reason"] for f in rep["frozen"]} == {"model input", "model output"}
    assert len(rep["blocks"]) == 8 and {b["kind"] for b in rep["blocks"]} == {"residual"}
    assert sum(c["flops"] for c in rep["cost"]) == rep["flops"] and len(rep["cost"]) == rep["nodes"]
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal(
        (8, 3, 64, 64)).astype(np.float32))
    r = run("analyze", model_path, "--calib", tmp_path / "cal.npz", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    schemas.check(rep, schemas.ANALYZE_CALIB)
    assert rep["calibration"] == "data" and all("score" in g for g in rep["groups"])


def test_diff_json(model_path, tmp_path):
    small = tmp_path / "small.onnx"
    r = run("compress", model_path, "-o", small, "--flops", "0.7", "--blocks", "1", "--method",
            "magnitude", "--heal", "none", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("diff", model_path, small, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    schemas.check(rep, schemas.DIFF)
    assert rep["blocks_bypassed"] and rep["totals"]["nodes"]["changed"]


def _schemas_section(title: str) -> str:
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "schemas.md")
    doc = open(path, encoding="utf-8").read()
    assert title in doc, f"docs/schemas.md lacks the section {title!r}"
    return doc.split(title, 1)[1].split("\n#", 1)[0]


@pytest.mark.parametrize("title,schema", [
    ("## JSON schema (`compress --json`), version 1", schemas.COMPRESS),
    ("## JSON schema (`analyze --json`), version 1", schemas.ANALYZE_CALIB),
    ("## JSON schema (`--json`), version 2", schemas.DIFF)])
def test_docs_document_the_schemas(title, schema):
    """docs/schemas.md's schema blocks name exactly the keys the outputs have (tests/schemas.py)."""
    import re

    section = _schemas_section(title)
    block = section.split("```text", 1)[1].split("```", 1)[0]
    documented = set(re.findall(r'"(\w+)":', block))
    assert documented == schemas.keys(schema), (sorted(documented - schemas.keys(schema)),
                                                sorted(schemas.keys(schema) - documented))


def test_internal_error_is_one_line_and_debug_shows_it(model_path, tmp_path, monkeypatch, capsys):
    """An unexpected failure inside the API: exit 1, one line naming it, no output file;
    --debug lets the traceback through."""
    import idapgraph
    from idapgraph import cli

    def boom(*a, **k):
        raise RuntimeError("something broke inside\nsecond line")

    monkeypatch.setattr(idapgraph, "compress", boom)  # the public name the CLI calls
    out = tmp_path / "o.onnx"
    args = ["compress", str(model_path), "-o", str(out), "--flops", "0.5"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: something broke inside" in err
    assert "--debug" in err and not out.exists()
    with pytest.raises(RuntimeError, match="something broke"):
        cli.main(["--debug"] + args)
    assert not out.exists()


def test_plan_round_trip_and_dry_run(model_path, tmp_path):
    """--plan-out writes the plan, --plan-in applies it (no target needed) to the same result;
    --dry-run reports without writing a model."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r = run("compress", model_path, "-o", a, "--flops", "0.6", "--heal", "none", "--json",
            "--method", "magnitude", "--plan-out", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    r2 = run("compress", model_path, "-o", b, "--plan-in", tmp_path / "plan.json", "--heal",
             "none", "--json")
    assert r2.returncode == 0, r2.stderr
    ra, rb = json.loads(r.stdout), json.loads(r2.stdout)
    assert (ra["flops_after"], ra["params_after"]) == (rb["flops_after"], rb["params_after"])
    assert a.read_bytes() == b.read_bytes()
    r3 = run("compress", model_path, "--flops", "0.6", "--dry-run", "--json", "--method",
             "magnitude", "--heal", "none")
    assert r3.returncode == 0, r3.stderr
    rep = json.loads(r3.stdout)
    assert rep["output"] is None and rep["size_after"] < rep["size_before"]
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx", "plan.json"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal():
    from idapgraph.cli_view import ProgressView

    term = _Terminal()
    with ProgressView(stream=term) as bar:
        for p in range(2):
            for i in range(3):
                bar("calibration", i + 1, 3)
        bar("step", 1, None)
    text = term.getvalue()
    assert "calibration pass 2" in text and "pruning step 1" in text
    for stream, enabled in ((io.StringIO(), True), (_Terminal(), False)):
        with ProgressView(enabled=enabled, stream=stream) as bar:
            bar("calibration", 1, 3)
        assert stream.getvalue() == ""
