"""ONNX external data: read lazily, written back external and atomically, never over the input;
unsafe or broken references refused with one line before any data is read."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import idapgraph
from idapgraph.emit.save import save_onnx
from idapgraph.errors import InputError
from idapgraph.frontends import onnx_external, onnx_file

CLI = [sys.executable, "-m", "idapgraph"]
H, F = 256, 512  # weights of 512 KiB: larger than onnx_external.INLINE_BYTES, so kept mapped


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(2):
        for name, shape in ((f"w1_{i}", (H, F)), (f"b1_{i}", (F,)), (f"w2_{i}", (F, H)),
                            (f"b2_{i}", (H,))):
            inits.append(numpy_helper.from_array(
                (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))
        nodes += [helper.make_node("MatMul", [x, f"w1_{i}"], [f"h{i}"]),
                  helper.make_node("Add", [f"h{i}", f"b1_{i}"], [f"hb{i}"]),
                  helper.make_node("Relu", [f"hb{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"o{i}"]),
                  helper.make_node("Add", [f"o{i}", f"b2_{i}"], [f"ob{i}"]),
                  helper.make_node("Add", [x, f"ob{i}"], [f"y{i}"])]
        x = f"y{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, [4, H])],
                          [helper.make_tensor_value_info(x, 1, [4, H])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(model, folder, location="weights.bin"):
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                    location=location, size_threshold=0)
    return folder / "model.onnx"


@pytest.fixture()
def ext_model(tmp_path):
    return _save_external(_mlp(), tmp_path / "in")


def digest(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_load_keeps_large_tensors_on_disk(ext_model):
    m = onnx_file.load(ext_model)
    big = {t.name for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert big == {"w1_0", "w2_0", "w1_1", "w2_1"}  # the biases were small: read in
    for t in m.graph.initializer:
        if t.name in big:
            assert not t.raw_data
            v = onnx_external.read(t)
            assert isinstance(v, np.memmap) and not v.flags.writeable
    ref = onnx.load(str(ext_model))
    w = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    for t in m.graph.initializer:
        np.testing.assert_array_equal(onnx_external.read(t), w[t.name])


def test_cli_external_in_external_out(ext_model, tmp_path):
    before = {p: digest(p) for p in ext_model.parent.iterdir()}
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    r = subprocess.run(CLI + ["compress", str(ext_model), "-o", str(out), "--flops", "0.6",
                              "--blocks", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert {p: digest(p) for p in ext_model.parent.iterdir()} == before  # input untouched
    assert sorted(os.listdir(out.parent)) == ["small.onnx", "small.onnx.data"]  # no temp left
    onnx.checker.check_model(str(out), full_check=True)
    m = onnx.load(str(out), load_external_data=False)
    ext = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert ext and all(e.value == "small.onnx.data" for t in ext for e in t.external_data
                       if e.key == "location")
    y = _run(out, np.ones((4, H), np.float32))
    assert y.shape == (4, H) and np.isfinite(y).all()
    assert os.path.getsize(out.parent / "small.onnx.data") < os.path.getsize(
        ext_model.parent / "weights.bin")


def test_external_and_inline_inputs_compress_alike(ext_model, tmp_path):
    """Same plan, same weights: the memory-mapped route emits the same model outputs."""
    inline = tmp_path / "inline.onnx"
    inline.write_bytes(_mlp().SerializeToString())
    kw = dict(flops=0.5, method="magnitude", heal="none", blocks=1)
    a = idapgraph.compress(str(ext_model), **kw)
    b = idapgraph.compress(str(inline), **kw)
    assert a.plan.remove == b.plan.remove and a.plan.bypass == b.plan.bypass
    assert onnx_external.uses_external(a.model) and not onnx_external.uses_external(b.model)
    (tmp_path / "a").mkdir()
    save_onnx(a.model, tmp_path / "a" / "m.onnx")
    save_onnx(b.model, tmp_path / "b.onnx")
    x = np.random.default_rng(1).standard_normal((4, H)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "a" / "m.onnx", x), _run(tmp_path / "b.onnx", x),
                               rtol=1e-5, atol=1e-5)
    assert (tmp_path / "a" / "m.onnx.data").exists() and not (tmp_path / "b.onnx.data").exists()


def test_save_external_leaves_the_model_as_it_was(tmp_path):
    m = _mlp()
    before = m.SerializeToString()
    save_onnx(m, tmp_path / "m.onnx", external=True)
    assert m.SerializeToString() == before
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    x = np.ones((4, H), np.float32)
    ref = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(_run(tmp_path / "m.onnx", x), ref)


def _edit_locations(path, fn):
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            fn(t, e)
    path.write_bytes(m.SerializeToString())


# what each refusal's one line must say
SAYS = {"escape": "'../outside.bin' of tensor 'w1_0' escapes the model's folder",
        "absolute": "weights.bin' of tensor 'w1_0' escapes the model's folder",
        "missing": "external data file 'weights.bin' of tensor 'w1_0' is missing",
        "short": "runs past the end of 'weights.bin'",
        "bad_length": "external data length 12 does not match its shape"}


@pytest.mark.parametrize("case", list(SAYS))
def test_bad_external_data_refused_with_one_line(case, ext_model, tmp_path):
    data = ext_model.parent / "weights.bin"
    if case == "escape":  # a FIFO outside the folder: reading it would hang the test
        os.mkfifo(tmp_path / "outside.bin")
        _edit_locations(ext_model, lambda t, e: e.key == "location" and setattr(
            e, "value", "../outside.bin"))
    elif case == "absolute":
        _edit_locations(ext_model, lambda t, e: e.key == "location" and setattr(
            e, "value", str(data)))
    elif case == "missing":
        data.unlink()
    elif case == "short":
        data.write_bytes(data.read_bytes()[:1000])
    else:
        _edit_locations(ext_model, lambda t, e: e.key == "length" and setattr(e, "value", "12"))
    with pytest.raises(InputError):
        onnx_file.load(ext_model)
    out = tmp_path / "o.onnx"
    files = {os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs}
    for args in (["analyze", str(ext_model)],
                 ["compress", str(ext_model), "-o", str(out), "--flops", "0.5"]):
        r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("idapgraph: error: ") and SAYS[case] in lines[0], lines[0]
    # compress was refused before writing anything: no output, no data file, no temp file
    assert not out.exists() and not os.path.lexists(str(out) + ".data")
    assert {os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs} == files


def test_output_never_overwrites_the_input_data(tmp_path):
    """An input whose data file is named like the output's would be: refused, data intact."""
    folder = tmp_path / "m"
    src = _save_external(_mlp(), folder, location="small.onnx.data")
    before = digest(folder / "small.onnx.data")
    r = subprocess.run(CLI + ["compress", str(src), "-o", str(folder / "small.onnx"),
                              "--flops", "0.5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "overwrite the input" in r.stderr, r.stderr
    assert digest(folder / "small.onnx.data") == before
    assert not (folder / "small.onnx").exists()
    # the API route: saving a model that still reads that file over it is refused too
    res = idapgraph.compress(str(src), flops=0.9, method="magnitude", heal="none")
    with pytest.raises(InputError):
        save_onnx(res.model, folder / "small.onnx")
    assert digest(folder / "small.onnx.data") == before


def test_proto_with_relative_external_refs_is_refused(ext_model):
    with pytest.raises(InputError, match="pass the model's path"):
        idapgraph.analyze(onnx.load(str(ext_model), load_external_data=False))
