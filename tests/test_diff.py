"""``idapgraph diff``: node matching, numbers that agree with ``compress``, bypassed blocks,
the structural fallback for renamed graphs, the JSON schema, the HTML report, Model Explorer
overlays and the bad-input contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision

import idapgraph
from helpers import export_onnx
from idapgraph.frontends import onnx_names
from idapgraph.ir.ops import weight_axes, weighted_nodes
from idapgraph.passes import blocks as blocks_pass
from idapgraph.review import diff
from idapgraph.review.diff import STATUSES
from idapgraph.review import explorer

CLI = [sys.executable, "-m", "idapgraph"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def run_in_process(capsys, *args):
    """The CLI's ``main`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from idapgraph.cli import main

    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def anonymize(src, dst):
    """Drop every node name and rename every intermediate tensor: only structure is left."""
    m = onnx.load(str(src))
    g = m.graph
    keep = {v.name for v in list(g.input) + list(g.output)} | {t.name for t in g.initializer}
    ren = {o: f"t{i}_{j}" for i, n in enumerate(g.node) for j, o in enumerate(n.output)
           if o and o not in keep}
    for n in g.node:
        n.name = ""
        n.input[:] = [ren.get(x, x) for x in n.input]
        n.output[:] = [ren.get(x, x) for x in n.output]
    for vi in g.value_info:
        vi.name = ren.get(vi.name, vi.name)
    onnx.save(m, str(dst))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    torch.manual_seed(0)
    a = d / "r18.onnx"
    a.write_bytes(export_onnx(torchvision.models.resnet18().eval(),
                              (torch.randn(1, 3, 64, 64),)).SerializeToString())
    out = {"dir": d, "a": a}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, kw in (("pruned", {"flops": 0.5}), ("bypass", {"blocks": 1}),
                        ("bypass_none", {"blocks": 1, "heal": "none"})):
            res = idapgraph.compress(str(a), **kw)
            p = d / f"{key}.onnx"
            p.write_bytes(res.model.SerializeToString())
            out[key] = (p, res)
    return out


def _expected_drop(a_path, plan):
    """Output channels each conv/linear layer of A must lose under ``plan``."""
    an = idapgraph.analyze(str(a_path))
    g = an.graph
    weight_of = {n.inputs[1]: n for n in weighted_nodes(g)}
    drop = {n.name: 0 for n in weighted_nodes(g)}
    for grp in an.coupling.groups:
        k = len(plan.remove.get(grp.key, ()))
        for s in grp.params(g):
            n = weight_of.get(s.tensor)
            if n is not None and s.axis == weight_axes(n)[0]:
                drop[n.name] += k
    return drop


def test_numbers_agree_with_compress(models):
    b, res = models["pruned"]
    d = diff(models["a"], b)
    t = d.totals()
    rep = res.report
    assert (t["flops_a"], t["flops_b"]) == (rep.flops_before, rep.flops_after)
    assert (t["params_a"], t["params_b"]) == (rep.params_before, rep.params_after)
    assert d.matching.counts()["name"] == len(d.a.graph) == len(d.b.graph)
    assert t["nodes"]["removed"] == t["nodes"]["bypassed"] == t["nodes"]["added"] == 0
    drop = _expected_drop(models["a"], res.plan)
    layers = {r.a: r for r in d.nodes if r.channels_a is not None}
    assert set(layers) == set(drop) and len(layers) == 21
    for name, k in drop.items():
        r = layers[name]
        assert r.channels_b == r.channels_a - k, name
        assert r.kept == pytest.approx(r.channels_b / r.channels_a)
        assert r.weights_b[0][weight_axes(d.b.graph.nodes[r.b])[0]] == r.channels_b
    assert t["layers_pruned"] == sum(1 for k in drop.values() if k) > 0
    assert t["channels_a"] - t["channels_b"] == sum(drop.values())
    # per-node FLOPs add up to the totals on both sides
    assert sum(r.flops_a or 0 for r in d.nodes) == t["flops_a"]
    assert sum(r.flops_b or 0 for r in d.nodes) == t["flops_b"]
    first = d.nodes[0]
    assert first.a == "/conv1/Conv" and first.outputs_a == [[1, 64, 32, 32]]
    assert first.outputs_b == [[1, first.channels_b, 32, 32]]


def _bypass_checks(models, key):
    b, res = models[key]
    d = diff(models["a"], b)
    assert [blk["key"] for blk in d.blocks] == res.report.blocks_bypassed == ["b6"]
    block = {x.key: x for x in blocks_pass.find(d.a.graph)}["b6"]
    bypassed = [r for r in d.nodes if r.status == "bypassed"]
    assert all(r.block == "b6" and r.b is None and r.kept == 0.0 for r in bypassed)
    assert d.totals()["flops_b"] == res.report.flops_after
    assert d.totals()["flops_a"] - d.totals()["flops_b"] == d.blocks[0]["flops"]
    assert not [r for r in d.nodes if r.status in ("removed", "added")]
    return d, block, bypassed, res


def test_bypassed_block_mean_substitution(models):
    d, block, bypassed, res = _bypass_checks(models, "bypass")
    # healing keeps the add with the branch's mean output as a constant
    assert [r.a for r in bypassed] == block.nodes and d.blocks[0]["add_kept"]
    add = next(r for r in d.nodes if r.a == block.add)
    assert add.status == "changed" and add.weights_a == [] and add.weights_b == [[1, 512, 2, 2]]
    # that constant is a stored float tensor: counted as parameters by both diff and compress
    assert add.params_b == 512 * 2 * 2
    assert d.totals()["params_b"] == res.report.params_after


def test_bypassed_block_without_healing(models):
    d, block, bypassed, res = _bypass_checks(models, "bypass_none")
    assert [r.a for r in bypassed] == block.nodes + [block.add]
    assert not d.blocks[0]["add_kept"]
    assert d.totals()["params_b"] == res.report.params_after


@pytest.mark.parametrize("key", ["pruned", "bypass"])
def test_renamed_nodes_structural_fallback(models, key, tmp_path):
    b = models[key][0]
    anon = tmp_path / "anon.onnx"
    anonymize(b, anon)
    named, renamed = diff(models["a"], b), diff(models["a"], anon)
    counts = renamed.matching.counts()
    assert counts["name"] == 0 and counts["structure"] >= 30
    assert sum(counts.values()) == len(renamed.b.graph)  # every node of B found its partner
    # healing records name B's layers; with every name gone there is nothing to put them on
    drop = lambda t: {k: v for k, v in t.items() if k != "layers_healed"}  # noqa: E731
    assert drop(renamed.totals()) == drop(named.totals()) and renamed.blocks == named.blocks
    assert renamed.totals()["layers_healed"] == 0
    for x, y in zip(named.nodes, renamed.nodes, strict=True):
        assert (x.a, x.status, x.channels_b, x.outputs_b, x.weights_b, x.flops_b) == \
            (y.a, y.status, y.channels_b, y.outputs_b, y.weights_b, y.flops_b)
        assert (y.b is None) == (x.b is None) and (y.b is None or not y.b.startswith("/"))


def test_identity_diff(models):
    d = diff(models["a"], models["a"])
    assert all(r.status == "same" and r.kept == 1.0 for r in d.nodes)
    assert d.totals()["flops_ratio"] == 1.0 and not d.blocks


NODE_KEYS = {"a", "b", "op", "status", "match", "block", "outputs_a", "outputs_b", "weights_a",
             "weights_b", "channels_a", "channels_b", "kept", "flops_a", "flops_b", "params_a",
             "params_b", "weights_change", "healing"}


def test_json_schema(models):
    r = run("diff", models["a"], models["bypass"][0], "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert set(j) == {"schema", "version", "a", "b", "totals", "match", "blocks_bypassed",
                      "healing", "nodes"}
    assert (j["schema"], j["version"]) == ("idapgraph.diff", 2)
    for side in ("a", "b"):
        assert set(j[side]) == {"path", "nodes", "flops", "params"}
    assert set(j["totals"]) == {"flops_a", "flops_b", "flops_ratio", "params_a", "params_b",
                                "params_ratio", "nodes", "layers", "layers_pruned",
                                "layers_healed", "channels_a", "channels_b"}
    assert set(j["totals"]["nodes"]) == set(STATUSES)
    assert sum(j["totals"]["nodes"].values()) == len(j["nodes"])
    assert set(j["match"]) == {"name", "tensor", "structure", "order"}
    assert set(j["blocks_bypassed"][0]) == {"key", "add", "add_kept", "nodes", "flops"}
    for n in j["nodes"]:
        assert set(n) == NODE_KEYS
        assert n["status"] in STATUSES
        assert n["weights_change"] is None or n["weights_change"] >= 0
        assert (n["match"] is None) == (n["a"] is None or n["b"] is None)
        for k in ("outputs_a", "outputs_b", "weights_a", "weights_b"):
            assert n[k] is None or all(s is None or all(isinstance(x, int) for x in s)
                                       for s in n[k])
        assert n["kept"] is None or 0 <= n["kept"] <= 1
    assert j["totals"]["flops_b"] == models["bypass"][1].report.flops_after


def test_healing_shown_per_layer(models, capsys):
    """B written by compress (lsq healing) records what healing did to each layer; diff puts
    each record on its node, and text, Markdown and HTML show them."""
    b, res = models["pruned"]
    heal = res.report.heal
    assert heal["kept"] and heal["method"] == "lsq" and heal["corrections"]
    d = diff(models["a"], b)
    shown = {r.b: r.healing for r in d.nodes if r.healing}
    want = {c["layer"]: {k: v for k, v in c.items() if k != "layer"} for c in heal["corrections"]}
    assert shown == want and all(v["kind"] == "refit" for v in shown.values())
    assert all(v["residual_after"] < v["residual_before"] for v in shown.values())
    assert d.totals()["layers_healed"] == len(want)
    summary = d.to_dict()["healing"]
    assert summary["method"] == "lsq" and summary["error_after"] < summary["error_before"]
    rc, out, err = run_in_process(capsys, "diff", models["a"], b)
    assert rc == 0, err
    assert f"healing (lsq, recorded in B): {len(want)} layers changed" in out
    assert "refit: residual" in out
    rc, out, err = run_in_process(capsys, "diff", models["a"], b, "--markdown")
    assert rc == 0 and out.count("refit: residual") == len(want)
    # a model without idapgraph's metadata (any other tool's) simply has none
    assert diff(models["a"], models["a"]).to_dict()["healing"] is None


def test_retuned_weights_and_bad_metadata(models, tmp_path):
    """Weights that changed value but not shape make a node ``retuned`` (any tool's output);
    metadata that is not the JSON it should be is ignored, not trusted."""
    m = onnx.load(str(models["a"]))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.1, init.name))
    p = m.metadata_props.add()
    p.key, p.value = "idapgraph.healing", "{not json"
    b = tmp_path / "b.onnx"
    onnx.save(m, str(b))
    d = diff(models["a"], b)
    (r,) = [r for r in d.nodes if r.status != "same"]
    assert r.a == conv.name and r.status == "retuned"
    orig = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(models["a"])).graph.initializer}
    w, bias = orig[conv.input[1]], orig[conv.input[2]]  # the export folded BN into a bias
    want = 0.1 * np.linalg.norm(w) / np.sqrt(np.sum(w ** 2) + np.sum(bias ** 2))
    assert r.weights_change == pytest.approx(want, rel=1e-4)
    assert d.to_dict()["healing"] is None and r.healing is None


def test_text_and_markdown(models, capsys):
    rc, out, err = run_in_process(capsys, "diff", models["a"], models["pruned"][0])
    assert rc == 0, err
    assert "FLOPs" in out and "most changed nodes" in out
    assert "/layer" in out and "0.500" in out
    rc, out, err = run_in_process(capsys, "diff", models["a"], models["bypass"][0], "--markdown")
    assert rc == 0, err
    lines = out.splitlines()
    assert "| | A | B | B/A |" in lines and "|---|---:|---:|---:|" in lines
    assert any(line.startswith("| b6 |") for line in lines)
    rows = [line for line in lines if "| bypassed b6 |" in line]
    assert len(rows) == 3 and all(row.count("|") - row.count("\\|") == 13 for row in rows)


def test_html_and_model_explorer(models, tmp_path):
    html_path, me = tmp_path / "r.html", tmp_path / "me"
    r = run("diff", models["a"], models["bypass"][0], "--html", html_path,
            "--model-explorer", me)
    assert r.returncode == 0, r.stderr
    assert f"wrote {html_path}" in r.stdout
    text = html_path.read_text()
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "<link" not in text and not re.search(r"<script[^>]+src", text, re.I)
    assert "http://" not in text and "https://" not in text
    svg = re.search(r'<svg id="layer-chart"[^>]*width="(\d+)" height="(\d+)"', text)
    assert svg and int(svg.group(1)) > 0 and int(svg.group(2)) > 0
    # 21 conv/linear layers: two bars each, a red marker for each of the 2 bypassed convs
    assert text.count('class="bar"') == 2 * 19 and text.count('class="bar removed"') == 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    overlays = {s: json.loads((me / f"{s}.json").read_text()) for s in ("a", "b")}
    d = diff(models["a"], models["bypass"][0])
    for side, data in overlays.items():
        _check_node_data(data, _adapter_ids(models["a"] if side == "a" else models["bypass"][0]))
    ra = overlays["a"]["results"]
    for r_ in d.nodes:
        if r_.status == "bypassed":
            assert ra[r_.a] == {"value": 0.0, "bgColor": explorer.DARK_RED}
        elif r_.status == "same":
            assert ra[r_.a] == {"value": 1.0, "bgColor": "transparent"}
        else:
            assert ra[r_.a]["value"] == pytest.approx(1.0 if r_.kept is None else r_.kept)
            assert ra[r_.a]["bgColor"] == explorer.color(ra[r_.a]["value"])
    assert len(ra) == len(d.a.graph) and len(overlays["b"]["results"]) == len(d.b.graph)


def _adapter_ids(path):
    """Node ids the ONNX adapter of Model Explorer assigns (it runs onnx-ir's NameFixPass)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import NameFixPass

    m = ir.serde.deserialize_model(onnx.load(str(path)))
    NameFixPass()(m)
    return {n.name for n in m.graph}


COLOR = re.compile(r"^(#[0-9a-f]{6}|transparent)$")


def _check_node_data(data, ids):
    """Model Explorer's GraphNodeData (model_explorer/node_data_builder.py)."""
    assert isinstance(data, dict) and set(data) <= {
        "name", "results", "thresholds", "gradient", "hideInAggregatedStatsTable",
        "hideInChildrenStatsTable", "hideAggregatedStats", "showExpandedSummaryOnGroupNode",
        "showLabelCountColumnsInChildrenStatsTable"}
    assert isinstance(data["name"], str) and isinstance(data["results"], dict)
    assert "results" not in data["results"]  # else the UI reads it as per-graph data
    assert data["results"] and set(data["results"]) <= ids
    for v in data["results"].values():
        assert set(v) <= {"value", "bgColor", "textColor"} and "value" in v
        assert isinstance(v["value"], (int, float)) and 0 <= v["value"] <= 1
        assert COLOR.match(v["bgColor"])


def test_model_explorer_ids_of_unnamed_nodes(models, tmp_path):
    anon = tmp_path / "anon.onnx"
    anonymize(models["pruned"][0], anon)
    m = onnx.load(str(anon))
    m.graph.node[1].name = "node"  # a real name colliding with generated ones
    m.graph.node[2].name = m.graph.node[3].name = "dup"
    onnx.save(m, str(anon))
    ids = _adapter_ids(anon)
    assert onnx_names.node_ids(m) == onnx_names._fix_names([x.name for x in m.graph.node])
    assert set(onnx_names.node_ids(m)) == ids
    d = diff(models["a"], anon)
    data = explorer.overlays(d)["b"]
    _check_node_data(data, ids)
    assert len(data["results"]) == len(m.graph.node)
    pruned = [r for r in d.nodes if r.kept is not None and r.kept < 1]
    assert pruned and sorted(v["value"] for v in data["results"].values() if v["value"] < 1) == \
        sorted(round(r.kept, 6) for r in pruned)


def _bad_case(tmp_path, a, name):
    """(args, files that must not appear)"""
    if name == "missing":
        return ["diff", a, tmp_path / "nope.onnx"], []
    if name == "garbage":
        p = tmp_path / "garbage.onnx"
        p.write_bytes(np.random.default_rng(0).bytes(4096))
        return ["diff", p, a, "--html", tmp_path / "r.html"], [tmp_path / "r.html"]
    if name == "empty":
        p = tmp_path / "empty.onnx"
        p.write_bytes(b"")
        return ["diff", a, p, "--model-explorer", tmp_path / "me"], [tmp_path / "me"]
    if name == "html_folder_missing":
        return ["diff", a, a, "--html", tmp_path / "no" / "r.html"], [tmp_path / "no"]
    if name == "html_is_input":
        return ["diff", a, a, "--html", a], []
    if name == "explorer_is_file":
        f = tmp_path / "file"
        f.write_text("x")
        return ["diff", a, a, "--model-explorer", f], []
    if name == "json_and_markdown":
        return ["diff", a, a, "--json", "--markdown"], []
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["missing", "garbage", "empty", "html_folder_missing",
                                  "html_is_input", "explorer_is_file", "json_and_markdown"])
def test_bad_input(models, tmp_path, name, capsys):
    before = models["a"].read_bytes()
    args, absent = _bad_case(tmp_path, models["a"], name)
    if name == "missing":  # once as a real process: exit status and streams
        r = run(*args)
        rc, out, err = r.returncode, r.stdout, r.stderr
    else:
        rc, out, err = run_in_process(capsys, *args)
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idapgraph: error: "), err
    assert "Traceback" not in err and out == ""
    assert all(not p.exists() for p in absent)
    assert models["a"].read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_docs_document_the_schema(models, capsys):
    doc = open(os.path.join(REPO, "docs", "schemas.md"), encoding="utf-8").read()
    section = doc.split("## JSON schema (`--json`), version 2", 1)[1].split("\n## ", 1)[0]
    j = diff(models["a"], models["bypass"][0]).to_dict()
    keys = set(j) | set(j["a"]) | set(j["totals"]) | set(j["totals"]["nodes"]) | set(j["match"])
    keys |= set(j["blocks_bypassed"][0]) | set(j["nodes"][0])
    healed = diff(models["a"], models["pruned"][0]).to_dict()
    keys |= set(healed["healing"]) | {k for n in healed["nodes"] for k in (n["healing"] or {})}
    missing = sorted(k for k in keys if f'"{k}"' not in section)
    assert not missing, f"docs/schemas.md's diff schema lacks {missing}"
