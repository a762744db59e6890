"""Print the supported-ops table of README.md from the op-rule table (``--write`` updates README).

    python tools/ops_table.py            # print
    python tools/ops_table.py --write    # rewrite the block between the markers in README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from idapgraph.ir.ops import OPS

BEGIN, END = "<!-- ops-table:begin -->", "<!-- ops-table:end -->"

# backend ops mapped to each canonical op (documentation; the mapping lives in the frontends)
SOURCES = {
    "conv": ("Conv", "nn.Conv1d/2d/3d, F.conv*, aten.conv*"),
    "linear": ("Gemm, MatMul by an initializer", "nn.Linear, F.linear, x @ param, aten.linear/addmm"),
    "matmul": ("MatMul", "torch.matmul, @, bmm"),
    "attention": ("—", "F.scaled_dot_product_attention, aten.scaled_dot_product_attention"),
    "elementwise": ("Add, Sub, Mul, Div, Pow, Max, Min, Where, PRelu, comparisons",
                    "+ - * / **, torch.add/mul/…, maximum, where"),
    "unary": ("Relu, Sigmoid, Tanh, HardSwish, Gelu, Erf, Clip, Cast, Identity, Dropout, …",
              "activation modules and functions, dropout, contiguous, to, clone, stochastic_depth"),
    "batchnorm": ("BatchNormalization", "nn.BatchNorm*, F.batch_norm, nn.PReLU(C)"),
    "instancenorm": ("InstanceNormalization", "nn.InstanceNorm*"),
    "groupnorm": ("GroupNormalization (opset 21 layout)", "nn.GroupNorm, F.group_norm"),
    "layernorm": ("LayerNormalization, RMSNormalization",
                  "nn.LayerNorm, nn.RMSNorm, F.layer_norm, F.rms_norm, aten.rms_norm"),
    "pool": ("MaxPool, AveragePool, Global*Pool, Resize, Upsample", "pool modules/functions, interpolate"),
    "pad": ("Pad (constant pads and fill; opset 18 axes)", "F.pad, nn.ZeroPad/ConstantPad/ReflectionPad/ReplicationPad"),
    "reduce": ("Reduce*", "mean, sum, amax"),
    "softmax": ("Softmax, LogSoftmax (opset ≥ 13)", "softmax, log_softmax"),
    "concat": ("Concat", "torch.cat"),
    "split": ("Split", "torch.split, chunk"),
    "unbind": ("— (exported as Split or Slice, then Squeeze)", "unbind, aten.unbind"),
    "index": ("Slice (constant bounds), Gather (scalar constant index)", "x[...] basic indexing, aten.slice/select"),
    "gather": ("Gather (constant indices; a stored table by run-time indices: an embedding)",
               "x[idx], x[:, idx] by one tensor, aten.index, nn.Embedding, aten.embedding"),
    "reshape": ("Reshape (constant target), Flatten, Squeeze, Unsqueeze",
                "view, reshape, flatten, squeeze, unsqueeze, nn.Flatten, reshape_as, view_as"),
    "transpose": ("Transpose", "permute, transpose"),
    "expand": ("Expand", "expand, expand_as"),
    "meta": ("Shape, Size and arithmetic on their outputs", "size(), shape arithmetic"),
    "unknown": ("everything else (frozen)", "everything else (frozen)"),
}


def table() -> str:
    rows = ["| canonical op | ONNX ops | torch ops | channel rule |", "|---|---|---|---|"]
    for name, d in OPS.items():
        onnx_ops, torch_ops = SOURCES[name]
        rows.append(f"| `{name}` | {onnx_ops} | {torch_ops} | {d.summary} |")
    return "\n".join(rows)


def main() -> int:
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        text = readme.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        readme.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
