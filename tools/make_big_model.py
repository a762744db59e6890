"""Write a synthetic decoder-only transformer as ONNX with random weights in external data.

    python tools/make_big_model.py OUT_DIR [--gb 2.2] [--hidden 2048] [--layers N] [--heads 16]

Pre-norm layers: LayerNormalization, Q/K/V projections (MatMul + Add), heads split by Reshape +
Transpose, causal softmax attention, output projection, residual Add; then LayerNormalization,
MLP (MatMul + Add, Gelu, MatMul + Add), residual Add. Input and output: hidden states
``[1, seq, hidden]``. Without ``--layers`` the layer count is the smallest that makes the
weights at least ``--gb`` GiB. Weights are generated and appended to ``OUT_DIR/model.onnx.data``
one tensor at a time (in slices), so memory stays far below the model's size. Never commit the
output.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALIGN = 65536


class Weights:
    """Appends tensors to one external data file and returns protos that reference it."""

    def __init__(self, folder: str, name: str, seed: int) -> None:
        self.name = name
        self.f = open(os.path.join(folder, name), "wb")
        self.rng = np.random.default_rng(seed)
        self.bytes = 0

    def random(self, tname: str, shape: tuple[int, ...], scale: float, shift: float = 0.0,
               chunk: int = 1 << 24) -> TensorProto:
        offset = -(-self.f.tell() // ALIGN) * ALIGN
        self.f.seek(offset)
        n = math.prod(shape)
        for i in range(0, n, chunk):
            part = self.rng.standard_normal(min(chunk, n - i), dtype=np.float32) * scale + shift
            self.f.write(part.astype("<f4").tobytes())
        t = TensorProto()
        t.name, t.data_type = tname, TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.name), ("offset", str(offset)), ("length", str(4 * n))):
            t.external_data.add(key=k, value=v)
        self.bytes += 4 * n
        return t

    def close(self) -> None:
        self.f.close()


def build(folder: str, hidden: int, layers: int, heads: int, seq: int, seed: int = 0) -> str:
    os.makedirs(folder, exist_ok=True)
    ffn, d = 4 * hidden, hidden // heads
    w = Weights(folder, "model.onnx.data", seed)
    nodes, inits = [], []
    consts = {
        "heads_shape": numpy_helper.from_array(np.array([1, seq, heads, d], np.int64), "heads_shape"),
        "merge_shape": numpy_helper.from_array(np.array([1, seq, hidden], np.int64), "merge_shape"),
        "scale": numpy_helper.from_array(np.array(1 / math.sqrt(d), np.float32), "scale"),
        "mask": numpy_helper.from_array(
            np.triu(np.full((1, 1, seq, seq), -1e4, np.float32), 1), "mask"),
    }
    inits.extend(consts.values())

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def linear(x, p, n_in, n_out):
        inits.append(w.random(f"{p}.weight", (n_in, n_out), 1 / math.sqrt(n_in)))
        inits.append(w.random(f"{p}.bias", (n_out,), 0.02))
        return node("Add", [node("MatMul", [x, f"{p}.weight"], f"{p}.matmul"), f"{p}.bias"], p)

    def norm(x, p):
        inits.append(w.random(f"{p}.weight", (hidden,), 0.1, 1.0))
        inits.append(w.random(f"{p}.bias", (hidden,), 0.02))
        return node("LayerNormalization", [x, f"{p}.weight", f"{p}.bias"], p, axis=-1)

    x = "hidden_states"
    for i in range(layers):
        p = f"layers.{i}"
        h = norm(x, f"{p}.ln1")
        q, k, v = (node("Reshape", [linear(h, f"{p}.attn.{n}", hidden, hidden), "heads_shape"],
                        f"{p}.attn.{n}_heads") for n in "qkv")
        q = node("Transpose", [q], f"{p}.attn.q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}.attn.k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}.attn.v_t", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], f"{p}.attn.scores"), "scale"], f"{p}.attn.scaled")
        a = node("Softmax", [node("Add", [s, "mask"], f"{p}.attn.masked")], f"{p}.attn.probs",
                 axis=-1)
        o = node("Transpose", [node("MatMul", [a, v], f"{p}.attn.context")],
                 f"{p}.attn.context_t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, "merge_shape"], f"{p}.attn.merged")
        x = node("Add", [x, linear(o, f"{p}.attn.o", hidden, hidden)], f"{p}.attn_residual")
        h = norm(x, f"{p}.ln2")
        h = node("Gelu", [linear(h, f"{p}.mlp.up", hidden, ffn)], f"{p}.mlp.act")
        x = node("Add", [x, linear(h, f"{p}.mlp.down", ffn, hidden)], f"{p}.mlp_residual")
    out = norm(x, "final_norm")
    w.close()
    graph = helper.make_graph(
        nodes, "synthetic_decoder",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, seq, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                              producer_name="idapgraph-make_big_model")
    model.ir_version = 9
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    print(f"{path}: {layers} layers, hidden {hidden}, {heads} heads, seq {seq}, "
          f"{w.bytes / 2**30:.3f} GiB of weights in {w.name}")
    return path


def layers_for(gb: float, hidden: int) -> int:
    per_layer = 4 * (12 * hidden * hidden + 13 * hidden)
    return max(1, math.ceil(gb * 2**30 / per_layer))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--gb", type=float, default=2.2, help="weights size target in GiB")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=None, help="default: from --gb")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.hidden % a.heads:
        ap.error("--hidden must be a multiple of --heads")
    layers = a.layers or layers_for(a.gb, a.hidden)
    build(a.out_dir, a.hidden, layers, a.heads, a.seq, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
