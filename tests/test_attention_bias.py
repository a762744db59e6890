"""Per-head attention biases on the fx route (found by ``tools/coverage.py``: the emitted module
did not run). Swin's relative-position table is read through a tensor index
(``table[index]``): the index was not an input of the IR node, so it formed a prunable group
of its own and lost entries. T5's relative-position bias reaches
``scaled_dot_product_attention`` as its mask, whose head axis was not coupled with the heads.
Each model now compresses validly and equals the original with the removed channels zeroed."""

from __future__ import annotations

import pytest
import torch

import idapgraph
from helpers import rel_err, torch_out
from zoo import Seq2Seq


def _swin():
    import timm

    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=96,
                          window_size=3, depths=(1, 1, 1, 1))
    return m, (torch.randn(1, 3, 96, 96),)


def _t5():
    import transformers as tf

    cfg = tf.T5Config(d_model=128, d_ff=256, d_kv=32, num_layers=2, num_decoder_layers=2,
                      num_heads=4, vocab_size=1000)
    g = torch.Generator().manual_seed(0)
    ids, dec = torch.randint(0, 1000, (1, 16), generator=g), torch.randint(0, 1000, (1, 8), generator=g)
    return Seq2Seq(tf.T5Model(cfg)), (ids, dec)


@pytest.mark.parametrize("build", [_swin, _t5], ids=["swin", "t5"])
def test_per_head_bias_compresses_validly(build):
    torch.manual_seed(0)
    model, args = build()
    model.eval()
    r = idapgraph.compress(model, args, flops=0.7, method="random", heal="none")
    assert r.report.units_removed > 0 and r.report.flops_ratio < 1
    zero = idapgraph.apply_plan(model, r.plan, args, mode="zero")
    got, want = torch_out(r.model, args), torch_out(zero, args)
    assert [g.shape for g in got] == [w.shape for w in torch_out(model, args)]
    assert max(rel_err(w, g) for w, g in zip(want, got)) < 1e-4
