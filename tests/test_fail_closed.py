"""Nothing fails open: a step that cannot be done is either refused with one clear line or done
conservatively and said in the report -- never skipped in silence.

* ONNX loading: failed constant folding / symbolic shape inference is a report warning.
* Output path guard: an input whose external data files cannot be listed is refused.
* Latency tables: a layer the timer cannot time is counted untimed, and the report says so.
* ``blocks=N``: fewer bypassed than asked is not ``reached``.
* Torch batch probe: only torch's errors for a batch the module does not take mean "batch 1";
  any other exception propagates, and a batch-2 output of another shape is no "yes"."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

import idapgraph
from cost_clock import CostClock, layer_cost
from helpers import example_feeds, export_onnx, onnx_out
from idapgraph import cli
from idapgraph.emit.save import check_output_path
from idapgraph.errors import InputError
from idapgraph.frontends import onnx as onnx_frontend
from idapgraph.passes import latency as lat
from idapgraph.runners.latency_cache import DiskTable
from idapgraph.runners import clock
from idapgraph.ir.ops import weighted_nodes


class SmallCNN(nn.Module):
    """conv3x3 -> conv1x1 -> pool -> linear: two conv signatures and one linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


class ResNet(nn.Module):
    """A stem and two residual blocks: two blocks to bypass, no more."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            for _ in range(2))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.fc(x.mean((2, 3)))


def _proto(dynamic: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    kw = dict(input_names=["x"], dynamic_axes={"x": {0: "batch"}}) if dynamic else {}
    return export_onnx(SmallCNN().eval(), (torch.randn(1, 3, 8, 8),), **kw)


def _compress(proto, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return idapgraph.compress(proto, flops=0.6, method="magnitude", heal="none", **kw)


def _same_result(broken, good) -> None:
    """The compression that went on without the failed step is the one with it."""
    assert broken.plan.remove == good.plan.remove and broken.plan.remove
    feeds = example_feeds(good.model)
    for a, b in zip(onnx_out(broken.model, feeds), onnx_out(good.model, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 1. ONNX frontend: skipped optimisations are warnings
# ---------------------------------------------------------------------------------------------

def _boom(*a, **k):
    raise RuntimeError("simulated failure\nsecond line")


def test_failed_constant_folding_is_reported(monkeypatch):
    proto = _proto()
    good = _compress(proto)
    assert not any("constant folding" in w for w in good.report.warnings)
    monkeypatch.setattr(gs.Graph, "fold_constants", _boom)
    with pytest.warns(UserWarning, match="constant folding failed"):
        broken = idapgraph.compress(proto, flops=0.6, method="magnitude", heal="none")
    notes = [w for w in broken.report.warnings if "constant folding failed" in w]
    assert len(notes) == 1 and "simulated failure" in notes[0] and "\n" not in notes[0], \
        broken.report.warnings
    _same_result(broken, good)
    assert idapgraph.analyze(proto).warnings == notes
    # without a list to write to, the frontend warns
    with pytest.warns(UserWarning, match="constant folding failed"):
        onnx_frontend.normalize(proto)


def test_failed_symbolic_shape_inference_is_reported(monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = _proto(dynamic=True)
    good = _compress(proto)
    assert not any("symbolic shape inference" in w for w in good.report.warnings)
    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(_boom))
    broken = _compress(proto)
    notes = [w for w in broken.report.warnings if "symbolic shape inference failed" in w]
    assert len(notes) == 1 and "simulated failure" in notes[0], broken.report.warnings  # once
    _same_result(broken, good)
    assert idapgraph.analyze(proto).warnings == notes


def test_incomplete_symbolic_inference_leaves_no_file_behind(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference, when it cannot infer every shape, saves its partial
    model (and a data file named by a uuid) in the working directory before it raises: both are
    removed, a file of the user's there is not."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.data").write_text("the user's")
    real = SymbolicShapeInference._infer_impl
    monkeypatch.setattr(SymbolicShapeInference, "_infer_impl",
                        lambda self: real(self) and False)  # "incomplete"
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", 1, ["b", 64])],
                          [helper.make_tensor_value_info("y", 1, ["b", 64])], [w])
    notes = []
    onnx_frontend.normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                            notes)
    assert any("Incomplete symbolic shape inference" in n for n in notes), notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.data"]


# ---------------------------------------------------------------------------------------------
# 2. the output path guard fails closed
# ---------------------------------------------------------------------------------------------

def _external_model(folder):
    """``folder/model.onnx`` whose weights live in ``folder/small.onnx.data``: the data file an
    output ``folder/small.onnx`` would be written with."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", 1, [4, 64])],
                          [helper.make_tensor_value_info("y", 1, [4, 64])], [w])
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, location="small.onnx.data", size_threshold=0)
    return path


def _digest(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _parse_error() -> Exception:
    """What onnx raises for bytes that are not a ModelProto (protobuf's DecodeError)."""
    try:
        onnx.load_from_string(b"\xff\xff not a model")
    except Exception as e:  # noqa: BLE001 - the error itself is what is wanted
        return e
    raise AssertionError("garbage parsed as a model")


@pytest.mark.parametrize("error, says", [
    (OSError(5, "Input/output error"), "cannot list the external data files"),
    (_parse_error(), "not a valid ONNX model")])
def test_output_guard_refuses_when_the_input_cannot_be_listed(tmp_path, monkeypatch, error, says):
    inp = _external_model(tmp_path / "m")
    with pytest.raises(InputError, match="overwrite the input's external data"):
        check_output_path(tmp_path / "m" / "small.onnx", inp)  # the guard as it works

    def unreadable(*a, **k):
        raise error

    monkeypatch.setattr(onnx, "load", unreadable)
    with pytest.raises(InputError, match=says):
        check_output_path(tmp_path / "m" / "small.onnx", inp)


def test_cli_refuses_before_any_work_when_the_guard_cannot_be_established(tmp_path, monkeypatch,
                                                                           capsys):
    inp = _external_model(tmp_path / "m")
    data, out = tmp_path / "m" / "small.onnx.data", tmp_path / "m" / "small.onnx"
    before = _digest(data)

    def unreadable(*a, **k):
        raise PermissionError(13, "Permission denied")

    def no_work(*a, **k):
        raise AssertionError("compress ran although the output path was not checked")

    monkeypatch.setattr(onnx, "load", unreadable)
    monkeypatch.setattr(idapgraph, "compress", no_work)
    rc = cli.main(["compress", str(inp), "-o", str(out), "--flops", "0.5"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("idapgraph: error: ") and "cannot list the external data" in err
    assert _digest(data) == before and not out.exists()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.onnx", "small.onnx.data"]


# ---------------------------------------------------------------------------------------------
# 3. latency tables: untimeable layers are untimed
# ---------------------------------------------------------------------------------------------

def _fails_for(sig: dict) -> str | None:
    """How the stub timer fails for ``sig``: linear layers get None, 1x1 convs raise."""
    if sig["op"] == "linear":
        return "none"
    if sig["op"] == "conv" and sig.get("kernel") == [1, 1]:
        return "raise"
    return None


class FlakyTimer:
    def __init__(self, bad: float | None = None) -> None:
        self.calls: list[str] = []
        self.bad = bad  # what the timer returns for a linear layer

    def __call__(self, sig: dict, cin: int, cout: int):
        self.calls.append(lat.sig_key(sig))
        how = _fails_for(sig)
        if how == "raise":
            raise RuntimeError("no kernel for this layer\nmore detail")
        return self.bad if how == "none" else layer_cost(sig, cin, cout)


@pytest.mark.parametrize("bad", [None, float("nan"), -1.0])
def test_untimeable_layers_are_counted_untimed(tmp_path, bad):
    a = idapgraph.analyze(_proto())
    full = lat.build(a.graph, a.coupling, [], DiskTable({"m": 0}, tmp_path / "a.json"),
                     timer=lambda s, ci, co: layer_cost(s, ci, co))
    table = DiskTable({"m": 0}, tmp_path / "b.json")
    timer = FlakyTimer(bad)
    m = lat.build(a.graph, a.coupling, [], table, timer=timer)
    good_calls = [k for k in timer.calls if _fails_for(json.loads(k)) is None]
    assert m.timed == len(good_calls) < len(timer.calls)  # only what was measured is timed
    assert full.timed == full.needed > 0 and full.untimed == 0 and not full.untimed_layers
    assert m.untimed > 0 and m.needed + m.untimed == full.needed and m.timed == m.needed
    bad_sigs = {k for k in timer.calls if k not in good_calls}
    assert set(table.failed) == bad_sigs and len(bad_sigs) == 2
    assert all(timer.calls.count(k) == 1 for k in bad_sigs)  # a failed signature: tried once
    sigs = {n.name: lat.layer_signature(a.graph, n) for n in weighted_nodes(a.graph)}
    assert sorted(m.untimed_layers) == sorted(
        k for k, ls in sigs.items() if ls is not None and lat.sig_key(ls[0]) in bad_sigs)
    assert len(m.untimed_layers) == 2
    # priced per element, not by a table entry
    assert all(t.kind == "elems" for t in m.terms if set(t.nodes) & set(m.untimed_layers))
    note = lat.untimed_note(table)
    assert "untimed" in note and "2 layer signature(s)" in note and "\n" not in note
    # built again on the same table (the finer grid): no retry, the same counts
    m2 = lat.build(a.graph, a.coupling, [], table, timer=timer)
    assert all(timer.calls.count(k) == 1 for k in bad_sigs)
    assert m2.untimed == m.untimed and m2.timed == 0 and m2.needed == m.needed


class FlakyClock(CostClock):
    """The cost model, but linear layers cannot be timed (``failed``: calls that raised)."""

    failed = 0

    def layer(self, sig, cin, cout, *, threads, provider):
        if sig["op"] == "linear":
            self.failed += 1
            raise RuntimeError("no kernel for this layer")
        return super().layer(sig, cin, cout, threads=threads, provider=provider)


def test_latency_report_says_untimed_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAPGRAPH_CACHE", str(tmp_path / "cache"))
    proto = _proto()
    with clock.using(FlakyClock()) as clk:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = idapgraph.compress(proto, latency=0.7, method="magnitude", heal="none")
        rep = res.report
        assert any("untimed" in w and "linear" in w for w in rep.warnings), rep.warnings
        t = rep.latency_target["table"]
        # the failed call is not timed, and not retried on the finer grid
        assert t["timed"] == t["needed"] == clk.layers > 0 and clk.failed == 1
        clk.layers = clk.failed = 0
        prof = idapgraph.profile(proto, refresh=True)
    assert prof["untimed"] > 0 and prof["untimed_layers"] == ["/fc/Gemm"]
    assert prof["timed"] == prof["needed"] == clk.layers > 0 and clk.failed == 1
    assert any("untimed" in w for w in prof["warnings"])


# ---------------------------------------------------------------------------------------------
# 4. blocks=N: fewer bypassed is not reached
# ---------------------------------------------------------------------------------------------

def test_fewer_blocks_bypassed_than_asked_is_not_reached():
    torch.manual_seed(0)
    model, x = ResNet().eval(), torch.randn(1, 3, 8, 8)
    found = len(idapgraph.analyze(model, x).blocks)
    assert found == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        all_of_them = idapgraph.compress(model, x, blocks=found, heal="none").report
        more = idapgraph.compress(model, x, blocks=50, heal="none").report
    assert len(all_of_them.blocks_bypassed) == found and all_of_them.reached
    assert len(more.blocks_bypassed) == found and not more.reached
    assert any(f"bypassed {found} of the 50 blocks" in w for w in more.warnings), more.warnings


# ---------------------------------------------------------------------------------------------
# 5. the torch batch probe catches only what it expects
# ---------------------------------------------------------------------------------------------

class Unexpected(Exception):
    pass


def _fussy(x):
    """Not a shape error: a module's own failure at batch 2 (a bug, a broken device...)."""
    if x.shape[0] != 1:
        raise Unexpected("something else went wrong")
    return x


torch.fx.wrap("_fussy")


def _typed(x):
    if x.shape[0] != 1:
        raise TypeError("a bug, not a batch size")
    return x


torch.fx.wrap("_typed")


class Fussy(nn.Module):
    def __init__(self, check) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.check = check

    def forward(self, x):
        return self.c(_fussy(x) if self.check == "unexpected" else _typed(x))


class FixedBatch(nn.Module):
    """Reshapes to a hard-coded batch of 1: torch raises RuntimeError at batch 2."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.c(x).reshape(1, 8 * 4 * 4))


class Squeezed(nn.Module):
    """Drops the batch axis: at batch 2 it runs, but its output is not the traced one batched."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.c(x).squeeze(0))


@pytest.mark.parametrize("check, error", [("unexpected", Unexpected), ("type", TypeError)])
def test_batch_probe_lets_unexpected_errors_through(check, error):
    """The probe runs when calibration first asks for the batch size (a magnitude compress
    without calibration never runs it); an error it does not expect propagates then."""
    m = idapgraph.analyze(Fussy(check).eval(), torch.randn(1, 3, 4, 4)).model
    with pytest.raises(error):
        m.batch_size
    with pytest.raises(error):
        idapgraph.compress(Fussy(check).eval(), torch.randn(1, 3, 4, 4), flops=0.5)


def test_batch_probe_still_handles_a_batch_one_module():
    x = torch.randn(1, 3, 4, 4)
    assert idapgraph.analyze(FixedBatch().eval(), x).model.batch_size == 1
    assert idapgraph.analyze(Squeezed().eval(), x).model.batch_size == 1
    batchable = idapgraph.analyze(SmallCNN().eval(), x).model
    assert batchable.batch_size == 32 and not batchable.exact_batch
