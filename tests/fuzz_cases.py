"""One fuzz case per model route: a spec becomes a model of one backend, then ``fuzz_checks.check``.

Shared by ``tests/test_fuzz.py`` (CI budget) and ``tools/fuzz.py`` (long runs).
"""

from __future__ import annotations

from hypothesis import strategies as st

import fuzz_onnx
import fuzz_torch
from fuzz_checks import Stats, check, check_compress, check_parity, feeds_of
from helpers import export_onnx, onnx_out, rel_err, torch_out


def fx_case(spec, data, stats: Stats) -> None:
    model, args = fuzz_torch.build(spec)
    check(model, args, data, stats)


def _torchscript(spec, model, args, data, stats: Stats):
    """TorchScript export, opset 17 or 13, constant folding on or off, and a symbolic batch
    axis when the model has no size written into it (reshape/expand targets)."""
    opset = data.draw(st.sampled_from([17, 13]), label="opset")
    fold = data.draw(st.booleans(), label="constant folding")
    kw = {}
    if not any(o.kind in ("reshape", "expand") or o.p.get("form") == "view" for o in spec.ops) \
            and data.draw(st.booleans(), label="dynamic batch"):
        ins = [f"x{i}" for i in range(len(args))]
        outs = [f"y{i}" for i in range(len(spec.outputs))]
        kw = dict(input_names=ins, output_names=outs,
                  dynamic_axes={n: {0: "batch"} for n in ins + outs})
        stats["dynamic batch"] += 1
    return export_onnx(model, args, opset=opset, do_constant_folding=fold, **kw)


def torchscript_case(spec, data, stats: Stats) -> None:
    model, args = fuzz_torch.build(spec)
    check(_torchscript(spec, model, args, data, stats), args, data, stats)


def aten_case(spec, data, stats: Stats) -> None:
    """The ATen-level fx graph of ``torch.export`` (the frontend's fallback for modules that
    symbolic tracing cannot handle), given to idapgraph directly."""
    import torch

    model, args = fuzz_torch.build(spec)
    check(torch.export.export(model, args, strict=False).module(), args, data, stats)


def dynamo_case(spec, data, stats: Stats) -> None:
    model, args = fuzz_torch.build(spec)
    check(export_onnx(model, args, dynamo=True), args, data, stats)


def raw_onnx_case(spec, data, stats: Stats) -> None:
    model, args = fuzz_torch.build(spec)
    as_inputs = data.draw(st.integers(0, 3), label="initializers as inputs?") == 3
    stats["initializers as inputs"] += as_inputs
    proto = fuzz_onnx.build(spec, model, inits_as_inputs=as_inputs)
    want, got = torch_out(model, args), onnx_out(proto, feeds_of(proto, args))
    assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-4, "raw ONNX builder disagrees"
    check(proto, args, data, stats)


def compress_case(spec, data, stats: Stats) -> None:
    """``compress`` end to end, on the fx module or its TorchScript export."""
    model, args = fuzz_torch.build(spec)
    if data.draw(st.booleans(), label="onnx"):
        check_compress(_torchscript(spec, model, args, data, stats), args, data, stats)
    else:
        check_compress(model, args, data, stats)


def parity_case(spec, data, stats: Stats) -> None:
    """The same plan on the fx module and on its TorchScript export."""
    model, args = fuzz_torch.build(spec)
    check_parity(model, args, export_onnx(model, args), data, stats)


CASES = {"fx": fx_case, "aten": aten_case, "torchscript": torchscript_case, "dynamo": dynamo_case,
         "raw_onnx": raw_onnx_case, "compress": compress_case,
         "parity": parity_case}
