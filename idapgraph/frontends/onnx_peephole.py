"""Exact rewrites of export idioms that hide channels from the analysis.

torch's dynamo exporter writes ``key.transpose(-2, -1)`` inside scaled-dot-product attention
(onnxscript's torchlib) as Reshape to ``[-1, S, D]`` (batch and heads merged), Transpose
``[0, 2, 1]``, Reshape back to ``[..., D, S]`` with sizes read at run time. With a symbolic
batch the merged axis has no size, so the heads behind it were frozen: on a symbolic-sequence
Llama or BERT export, no attention head could go. The three nodes are one Transpose of the last
two axes, which the analysis follows."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def _dims(t: gs.Tensor) -> list | None:
    """``t``'s shape where every dim is known (an int or a symbolic name), else None."""
    shape = t.shape
    if shape is None or any(d is None or d == "" or (isinstance(d, int) and d < 0)
                            for d in shape):
        return None
    return list(shape)


def _only_producer(t: gs.Tensor, op: str) -> gs.Node | None:
    node = t.inputs[0] if len(t.inputs) == 1 else None
    return node if node is not None and node.op == op and (node.domain or "") in ("", "ai.onnx") \
        else None


def _swapped_last_axes(r2: gs.Node) -> gs.Tensor | None:
    """The input K of ``Reshape(Transpose(Reshape(K, [N, a, b]), [0, 2, 1]), K[:-2] + [b, a])``
    ending at ``r2``, where the shapes prove it is K with its last two axes swapped (the first
    reshape keeps K's last two sizes, so N is the product of the rest; the second splits N
    back into K's leading sizes), else None."""
    t_node = _only_producer(r2.inputs[0], "Transpose")
    if t_node is None or list(t_node.attrs.get("perm", ())) != [0, 2, 1]:
        return None
    r1 = _only_producer(t_node.inputs[0], "Reshape")
    if r1 is None:
        return None
    k, mid, out = _dims(r1.inputs[0]), _dims(r1.outputs[0]), _dims(r2.outputs[0])
    if k is None or mid is None or out is None or len(k) < 3 or len(mid) != 3:
        return None
    if mid[1:] != k[-2:] or out != k[:-2] + [k[-1], k[-2]]:
        return None
    return r1.inputs[0]


def fuse_swapped_last_axes(graph: gs.Graph) -> int:
    """Replace every such Reshape–Transpose–Reshape chain by one Transpose; the dead nodes go at
    the caller's cleanup. Returns how many were replaced."""
    done = 0
    for node in list(graph.nodes):
        if node.op != "Reshape" or (node.domain or "") not in ("", "ai.onnx"):
            continue
        k = _swapped_last_axes(node)
        if k is None:
            continue
        rank = len(k.shape)
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        node.op, node.attrs = "Transpose", {"perm": perm}
        node.inputs.clear()
        node.inputs.append(k)
        done += 1
    return done
