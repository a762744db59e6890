"""The op-rule table: what every canonical op means for channels, cost and rewriting.

This is the ONE place that knows op semantics. Both frontends translate backend ops into the
canonical ops defined here; coupling analysis, cost counting and the rewrite planner read only
this table. Each entry gives:

* ``couple(node, rel)``: how the axes of the op's operands relate. ``rel.same`` says two axes are
  the same channel space (index i on one is index i on the other); ``rel.link`` ties individual
  indices (concat offsets, flatten blocks, grouped convs); ``rel.freeze`` forbids removing any
  index of an axis, with a reason. Every axis of every operand an op touches must be described;
  axes a rule leaves out are frozen automatically ("not described by the rule"), so a missing
  rule can only make us prune less, never break a model.
* ``cost(node, shape)``: FLOPs of the op: multiply-accumulates (1 MAC = 1 FLOP) for
  conv/linear/matmul/attention; 2 per element for a bias add and for norms (so a conv followed by
  BatchNorm counts the same before and after an exporter folds the BN into the conv's bias);
  1 per input element for pooling and reductions; 0 for activations and other elementwise ops
  (exporters decompose them differently, e.g. SiLU -> Sigmoid+Mul, GELU -> 5 ops).
* ``rewrite(node, old, new)``: the canonical attributes that must change when tensor sizes
  change (``groups``, split sizes, slice bounds, reshape targets). Weight slicing needs no
  rewrite entry: it follows from the channel spaces of the parameter tensors themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .graph import ACTIVATION, META, Graph, Node

ShapeFn = Callable[[str], tuple]


class Space(NamedTuple):
    """One axis of one tensor: the unit of channel bookkeeping. (A named tuple: hashed and
    compared in C, which matters on graphs of 10k nodes, where coupling hashes ~10^6 of them.)"""

    tensor: str
    axis: int


class Relations:
    """Collector the rules write into (used by :mod:`idapgraph.passes.coupling`)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.same_pairs: list[tuple[Space, Space]] = []
        self.links: list[tuple[Space, np.ndarray, Space, np.ndarray]] = []
        self.frozen: dict[Space, str] = {}
        self.described: set[Space] = set()
        self.zeros: dict[str, bool] = {}  # zero_where_removed's verdicts

    def rank(self, t: str | None) -> int:
        if t is None:
            return 0
        shape = self.graph.tensors[t].shape
        return 0 if shape is None else len(shape)

    def _ok(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        if self.rank(a) == 0 or self.rank(b) == 0:  # scalars and unknown ranks carry no channels
            for t in (a, b):
                self.freeze_all(t, "tied to a scalar or a tensor of unknown rank")
            return False
        return True

    def size(self, t: str, axis: int):
        return self.graph.tensors[t].shape[axis]

    def same(self, a: str | None, ax: int, b: str | None, bx: int) -> None:
        if not self._ok(a, b):
            return
        sa, sb = Space(a, ax % self.rank(a)), Space(b, bx % self.rank(b))
        self.described.update((sa, sb))
        self.same_pairs.append((sa, sb))

    def link(self, a: str, ax: int, ia, b: str, bx: int, ib) -> None:
        if not self._ok(a, b):
            return
        sa, sb = Space(a, ax % self.rank(a)), Space(b, bx % self.rank(b))
        self.described.update((sa, sb))
        self.links.append((sa, np.asarray(ia, dtype=np.int64), sb, np.asarray(ib, dtype=np.int64)))

    def freeze(self, t: str | None, axis: int, reason: str) -> None:
        if t is None or self.rank(t) == 0:
            return
        s = Space(t, axis % self.rank(t))
        self.described.add(s)
        self.frozen.setdefault(s, reason)

    def freeze_all(self, t: str | None, reason: str) -> None:
        for ax in range(self.rank(t)):
            self.freeze(t, ax, reason)


@dataclass(frozen=True)
class OpDef:
    name: str
    summary: str  # one line for the README's supported-ops table
    couple: Callable[[Node, Relations], None]
    cost: Callable[[Node, ShapeFn], int] = lambda n, s: 0
    rewrite: Callable[[Node, ShapeFn, ShapeFn, Callable], dict[str, Any]] | None = None
    weighted: bool = False  # has a learned weight whose first axes are channel spaces
    operands: tuple[str, ...] = field(default_factory=tuple)


def _numel(shape) -> int:
    """Elements per example: a symbolic dimension (``None``, e.g. a dynamic batch) counts 1."""
    if shape is None:
        return 0
    return math.prod(1 if d is None else int(d) for d in shape)


def _out_elems(node: Node, shape: ShapeFn) -> int:
    return sum(_numel(shape(t)) for t in node.outputs)


# ---------------------------------------------------------------------------------------------
# coupling rules
# ---------------------------------------------------------------------------------------------


def _couple_unary(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    for ax in range(rel.rank(y)):
        rel.same(x, ax, y, ax)


def _couple_broadcast(node: Node, rel: Relations) -> None:
    """Elementwise ops with numpy broadcasting: aligned axes of equal size are the same space."""
    y = node.outputs[0]
    ry = rel.rank(y)
    yshape = rel.graph.shape(y)
    matched: set[int] = set()
    for x in node.present_inputs():
        if rel.graph.tensors[x].kind == META:
            continue
        rx = rel.rank(x)
        xshape = rel.graph.shape(x)
        for ax in range(rx):
            oy = ax + (ry - rx)
            if oy >= 0 and xshape[ax] == yshape[oy] and xshape[ax] != 1:
                rel.same(x, ax, y, oy)
                matched.add(oy)
            else:
                rel.freeze(x, ax, "broadcast axis")
    for ax in range(ry):
        if ax not in matched:
            rel.freeze(y, ax, "axis created by broadcasting")


def _couple_conv(node: Node, rel: Relations) -> None:
    x, w, b = (node.inputs + [None, None])[:3]
    y = node.outputs[0]
    g = int(node.attrs.get("groups", 1))
    rel.same(x, 0, y, 0)
    for ax in range(2, rel.rank(y)):
        rel.freeze(x, ax, "spatial axis")
        rel.freeze(y, ax, "spatial axis")
    for ax in range(2, rel.rank(w)):
        rel.freeze(w, ax, "kernel axis")
    rel.same(w, 0, y, 1)
    rel.same(b, 0, y, 1)
    if g == 1:
        rel.same(x, 1, w, 1)
        return
    cin, cout = rel.size(x, 1), rel.size(y, 1)
    if cin is None or cout is None or cin % g or cout % g:
        rel.freeze(x, 1, "grouped conv with unknown channel count")
        rel.freeze(y, 1, "grouped conv with unknown channel count")
        return
    gi, go = cin // g, cout // g
    # A grouped conv can only lose whole groups: tie every input and output channel of group k
    # to the group's first output channel.
    rel.link(x, 1, np.arange(cin), y, 1, (np.arange(cin) // gi) * go)
    rel.link(y, 1, np.arange(cout), y, 1, (np.arange(cout) // go) * go)
    rel.freeze(w, 1, "channels inside a conv group")


def weight_axes(node: Node) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of a weighted op's weight."""
    return (1, 0) if node.op == "linear" and node.attrs.get("layout", "oi") == "io" else (0, 1)


def channel_axis(node: Node, rank: int) -> int:
    """The channel axis of a weighted op's input or output activation of rank ``rank``."""
    return 1 if node.op == "conv" else rank - 1


def _couple_linear(node: Node, rel: Relations) -> None:
    x, w, b = (node.inputs + [None, None])[:3]
    y = node.outputs[0]
    w_out, w_in = weight_axes(node)
    ry = rel.rank(y)
    for ax in range(ry - 1):
        rel.same(x, ax, y, ax)
    rel.same(x, -1, w, w_in)
    rel.same(w, w_out, y, -1)
    rel.same(b, 0, y, -1)


def _couple_batch_axes(rel: Relations, operands, y: str, what: str) -> None:
    """Leading (batch) axes of matrix-shaped operands broadcast like elementwise ops."""
    ry = rel.rank(y)
    yshape = rel.graph.shape(y)
    for t in operands:
        rt = rel.rank(t)
        tshape = rel.graph.shape(t)
        for ax in range(rt - 2):
            oy = ax + (ry - rt)
            if oy >= 0 and tshape[ax] == yshape[oy] and tshape[ax] != 1:
                rel.same(t, ax, y, oy)
            else:
                rel.freeze(t, ax, f"broadcast batch axis of {what}")
    for ax in range(ry - 2):
        if Space(y, ax) not in rel.described:
            rel.freeze(y, ax, f"broadcast batch axis of {what}")


def _couple_matmul(node: Node, rel: Relations) -> None:
    a, b = node.inputs[:2]
    y = node.outputs[0]
    ra, rb, ry = rel.rank(a), rel.rank(b), rel.rank(y)
    if ra < 2 or rb < 2:
        for t in (a, b, y):
            rel.freeze_all(t, "matmul with a 1-D operand")
        return
    rel.same(a, -1, b, -2)  # contracted axis: zeroed entries add nothing
    rel.same(a, -2, y, -2)
    rel.same(b, -1, y, -1)
    _couple_batch_axes(rel, (a, b), y, "matmul")


def _couple_batchnorm(node: Node, rel: Relations) -> None:
    x = node.inputs[0]
    y = node.outputs[0]
    _couple_unary(node, rel)
    for p in node.inputs[1:]:
        rel.same(p, 0, y, 1)


def _couple_instancenorm(node: Node, rel: Relations) -> None:
    _couple_batchnorm(node, rel)
    for ax in range(2, rel.rank(node.outputs[0])):  # statistics are taken over these axes
        for t in (node.inputs[0], node.outputs[0]):
            rel.freeze(t, ax, "normalised over by an InstanceNorm")


def _rms_free(node: Node, rel: Relations) -> bool:
    """A fused RMSNorm over the last axis alone, with a per-channel (rank-1) scale, of a tensor
    :func:`zero_where_removed` proves zero at zeroed channels: its statistic is a mean of
    squares, so the axis may lose those channels (:func:`_rewrite_layernorm` keeps the divisor)."""
    x, r = node.inputs[0], rel.rank(node.outputs[0])
    return (node.attrs.get("fn") == "rms" and node.attrs.get("axis", -1) % r == r - 1
            and all(rel.rank(p) == 1 for p in node.inputs[1:] if p is not None)
            and zero_where_removed(rel.graph, x, rel.zeros))


def _couple_layernorm(node: Node, rel: Relations) -> None:
    x = node.inputs[0]
    y = node.outputs[0]
    r = rel.rank(y)
    first = node.attrs.get("axis", -1) % r
    for ax in range(first):
        rel.same(x, ax, y, ax)
    if _rms_free(node, rel):
        rel.same(x, r - 1, y, r - 1)
        for p in node.inputs[1:]:
            rel.same(p, 0, x, r - 1)
        return
    reason = "normalised over by a LayerNorm/RMSNorm: removing channels changes its statistics"
    for ax in range(first, r):
        rel.freeze(x, ax, reason)
        rel.freeze(y, ax, reason)
    for p in node.inputs[1:]:
        rel.freeze_all(p, reason)


def _couple_groupnorm(node: Node, rel: Relations) -> None:
    x = node.inputs[0]
    y = node.outputs[0]
    _couple_batchnorm(node, rel)
    g = int(node.attrs["groups"])
    c = rel.size(y, 1)
    if c is None or c % g:
        rel.freeze(y, 1, "GroupNorm with unknown channel count")
        return
    per = c // g
    # statistics are per group: only whole groups can go
    rel.link(y, 1, np.arange(c), y, 1, (np.arange(c) // per) * per)


def _couple_pool(node: Node, rel: Relations) -> None:
    """Pooling/resizing: batch and channel axes pass through, spatial axes are fixed. A resize
    whose sizes/scales touch the batch or channel axis (ONNX Resize names every axis) keeps
    that axis only where it provably leaves it alone (a stored size equal to the input's, which
    the rewrite then edits, or a scale of 1)."""
    x, y = node.inputs[0], node.outputs[0]
    resized = _resized_axes(node, rel.graph.shape(x))
    for ax in (0, 1):
        if ax in resized:
            rel.freeze(x, ax, resized[ax])
            rel.freeze(y, ax, resized[ax])
        else:
            rel.same(x, ax, y, ax)
    for ax in range(2, rel.rank(y)):
        rel.freeze(x, ax, "spatial axis")
        rel.freeze(y, ax, "spatial axis")
    for t in node.inputs[1:]:
        rel.freeze_all(t, "pooling parameter")


def _resized_axes(node: Node, xs) -> dict[int, str]:
    """Batch/channel axes whose size a resize's ``sizes``/``scales`` (frontend attributes) may
    change, with the reason; {} for pooling and spatial-only resizes."""
    a = node.attrs
    kind = "sizes" if "sizes" in a else "scales" if "scales" in a else None
    if kind is None:
        return {}
    vals = a[kind]
    if vals is None or xs is None:
        return {0: f"resize {kind} computed at run time", 1: f"resize {kind} computed at run time"}
    axes = a.get("resize_axes") or range(len(vals))
    out = {}
    for ax, v in zip(axes, vals):
        ax = ax % len(xs)
        if ax > 1:
            continue
        if kind == "scales" and v != 1.0:
            out[ax] = "axis scaled by a resize"
        elif kind == "sizes" and (v is None or xs[ax] is None or v != xs[ax]):
            out[ax] = "axis sized by a resize at run time" if v is None else "axis resized"
    return out


def _couple_pad(node: Node, rel: Relations) -> None:
    """Padding: an axis padded by nothing passes through. An axis padded with zeros (CIFAR
    ResNets' "option A" shortcut pads the channel axis) keeps its indices at an offset, like a
    concat with an all-zero tensor: input index i is output index i + pad_before, and the padded
    indices belong to the output alone. Other padded axes (reflect/edge, a nonzero or run-time
    fill, cropping) are fixed."""
    x, y = node.inputs[0], node.outputs[0]
    r, pads = rel.rank(y), node.attrs.get("pads")
    if pads is None or len(pads) != 2 * r:
        rel.freeze_all(x, "padding of unknown extent")
        rel.freeze_all(y, "padding of unknown extent")
        return
    zero_fill = node.attrs.get("mode", "constant") == "constant" and \
        node.attrs.get("value", 0.0) == 0.0
    for ax in range(r):
        before, after = pads[ax], pads[ax + r]
        n = rel.size(x, ax)
        if before == 0 and after == 0:
            rel.same(x, ax, y, ax)
        elif zero_fill and before >= 0 and after >= 0 and n is not None:
            rel.link(x, ax, np.arange(n), y, ax, before + np.arange(n))
        else:
            rel.freeze(x, ax, "padded axis")
            rel.freeze(y, ax, "padded axis")


def _reduced_axes(node: Node, rank: int) -> set[int]:
    axes = node.attrs.get("axes")
    return {a % rank for a in axes} if axes is not None else set(range(rank))


def _zero_rule(graph: Graph, t: str) -> tuple[list[str], bool]:
    """(tensors ``t``'s verdict also needs, whether its producer keeps zeroed channels zero) for
    :func:`zero_where_removed`."""
    info, node = graph.tensors[t], graph.producer(t)
    if node is None:
        return [], False
    if node.op == "linear":  # its output rows (and bias) are what zeroing zeroes
        return [], True
    if node.op == "gather":  # a table lookup: the table's last axis is the output's
        table = graph.tensors[node.inputs[0]]
        return [], (table.kind != ACTIVATION and node.attrs["axis"] == 0
                    and len(table.shape or ()) == 2)
    if node.op == "unary" and node.attrs.get("fn") in ("cast", "identity"):
        return [node.inputs[0]], True
    if node.op == "elementwise" and node.attrs.get("fn") == "add":
        ins = node.present_inputs()
        return ins, all(graph.tensors[i].kind == ACTIVATION and graph.shape(i) == info.shape
                        for i in ins)
    return [], False


def zero_where_removed(graph: Graph, tensor: str, memo: dict[str, bool] | None = None) -> bool:
    """Whether ``tensor``'s removed channels on its last axis are provably zero in the original
    with those channels zeroed (``apply_plan(mode="zero")`` zeroes the parameters that produce
    them): a linear layer's output or a table lookup's, through casts and identities, and sums
    of such tensors of one shape (a transformer's residual stream). Anything else (a tensor
    minus its mean, an activation with f(0) != 0) is not proven. ``memo`` caches verdicts."""
    memo = {} if memo is None else memo
    stack = [tensor]
    while stack:  # depth-first without recursion: a residual stream is a chain of adds
        t = stack[-1]
        if t in memo:
            stack.pop()
            continue
        deps, ok = _zero_rule(graph, t)
        todo = [d for d in deps if d not in memo] if ok else []
        if todo:
            stack.extend(todo)
            continue
        memo[t] = ok and all(memo[d] for d in deps)
        stack.pop()
    return memo[tensor]


def _sums_zeros(node: Node, rel: Relations) -> bool:
    """A reduction over the last axis alone whose value is unchanged when that axis loses
    channels that were zero: a sum or mean of squares (RMSNorm's statistic; the mean keeps its
    divisor, :func:`_rewrite_reduce`), a sum of squares, an L1 or L2 norm, of a tensor
    :func:`zero_where_removed` proves zero there."""
    x, fn = node.inputs[0], node.attrs.get("fn")
    if _reduced_axes(node, rel.rank(x)) != {rel.rank(x) - 1}:
        return False
    if fn in ("sum", "mean"):
        sq = rel.graph.producer(x)
        if sq is None or sq.op != "elementwise" or sq.attrs.get("fn") != "square":
            return False
        x = sq.present_inputs()[0]
    elif fn not in ("sumsq", "l1", "l2"):
        return False
    return zero_where_removed(rel.graph, x, rel.zeros)


def _couple_reduce(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rx = rel.rank(x)
    axes = _reduced_axes(node, rx)
    keep = node.attrs.get("keepdims", True)
    free = _sums_zeros(node, rel)  # its axis may lose channels (RMSNorm on a residual stream)
    oy = 0
    for ax in range(rx):
        if ax in axes:
            if free:
                rel.described.add(Space(x, ax))
            else:
                rel.freeze(x, ax, "reduced over")
            if keep:
                rel.freeze(y, oy, "reduced over")
                oy += 1
        else:
            rel.same(x, ax, y, oy)
            oy += 1


def _couple_softmax(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    r = rel.rank(y)
    axis = node.attrs.get("axis", -1) % r
    for ax in range(r):
        if ax == axis:
            rel.freeze(x, ax, "softmax axis: removing entries renormalises the rest")
            rel.freeze(y, ax, "softmax axis: removing entries renormalises the rest")
        else:
            rel.same(x, ax, y, ax)


def _couple_concat(node: Node, rel: Relations) -> None:
    y = node.outputs[0]
    r = rel.rank(y)
    axis = node.attrs["axis"] % r
    off = 0
    for x in node.present_inputs():
        for ax in range(r):
            if ax != axis:
                rel.same(x, ax, y, ax)
        n = rel.size(x, axis)
        if n is None or off is None:
            rel.freeze(x, axis, "concat of unknown size")
            rel.freeze(y, axis, "concat of unknown size")
            off = None
            continue
        rel.link(x, axis, np.arange(n), y, axis, off + np.arange(n))
        off += n


def _couple_split(node: Node, rel: Relations) -> None:
    x = node.inputs[0]
    r = rel.rank(x)
    axis = node.attrs["axis"] % r
    off = 0
    for y in node.outputs:
        for ax in range(r):
            if ax != axis:
                rel.same(x, ax, y, ax)
        n = rel.size(y, axis)
        if n is None or off is None:
            rel.freeze(x, axis, "split of unknown size")
            rel.freeze(y, axis, "split of unknown size")
            off = None
            continue
        rel.link(x, axis, off + np.arange(n), y, axis, np.arange(n))
        off += n


def _couple_unbind(node: Node, rel: Relations) -> None:
    """``unbind``: one output per index of ``axis`` (timm's ``q, k, v = qkv.unbind(0)``); that
    axis is frozen (pruning it would change the number of outputs), the others pass through."""
    x = node.inputs[0]
    r = rel.rank(x)
    axis = node.attrs["axis"] % r
    rel.freeze(x, axis, "unbound axis (one output per index)")
    for y in node.outputs:
        for ax in range(r):
            if ax != axis:
                rel.same(x, ax, y, ax - (ax > axis))


def _couple_index(node: Node, rel: Relations) -> None:
    """Basic indexing: ``attrs['map']`` lists, per output axis, ``(in_axis, start, stop, step)`` or
    ``None`` for a new axis; input axes not listed were indexed by an integer (dropped)."""
    x, y = node.inputs[0], node.outputs[0]
    used = set()
    for oy, entry in enumerate(node.attrs["map"]):
        if entry is None:
            rel.freeze(y, oy, "new axis")
            continue
        ax, start, stop, step = entry
        used.add(ax)
        n_in, n_out = rel.size(x, ax), rel.size(y, oy)
        if n_in is not None and n_out == n_in and start == 0 and step == 1:
            rel.same(x, ax, y, oy)
        elif n_out is not None and step == 1 and start is not None:
            rel.link(y, oy, np.arange(n_out), x, ax, start + np.arange(n_out))
        else:
            rel.freeze(x, ax, "strided or unknown slice")
            rel.freeze(y, oy, "strided or unknown slice")
    for ax in range(rel.rank(x)):
        if ax not in used:
            rel.freeze(x, ax, "indexed by an integer")


def _reshape_groups(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal element count into minimal runs of axes with equal products."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return None
        if a[i] is None or b[j] is None:
            if a[i] is None and b[j] is None:
                groups.append(([i], [j]))
                i += 1
                j += 1
                continue
            return None
        gi, gj, pi, pj = [i], [j], a[i], b[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= len(a) or a[i] is None:
                    return None
                pi *= a[i]
                gi.append(i)
                i += 1
            else:
                if j >= len(b) or b[j] is None:
                    return None
                pj *= b[j]
                gj.append(j)
                j += 1
        groups.append((gi, gj))
    return groups


_HEAD_WALK_OPS = ("transpose", "unary", "elementwise")


def _head_axes(graph: Graph, tensor: str, downstream: bool, depth: int = 12) -> set[int]:
    """Axes of ``tensor`` that reach a batch axis of an activation product (matmul, attention)
    through transposes, activations, elementwise ops, splits, unbinds, whole-axis slices,
    concats along other axes, expands of other axes and one-to-one reshapes (or merges it
    leads) only: attention heads.

    Walks consumers (``downstream``) or producers. Used to cut a hidden axis split into
    (heads, head size) at the heads, so that pruning removes whole heads.
    """
    found: set[int] = set()
    todo = [(tensor, ax, ax, 0) for ax in range(len(graph.shape(tensor) or ()))]
    seen = set()
    while todo:
        t, ax, origin, d = todo.pop()
        if (t, ax) in seen or d > depth:
            continue
        seen.add((t, ax))
        info = graph.tensors[t]
        nodes = info.consumers if downstream else ([info.producer] if info.producer else [])
        for name in nodes:
            node = graph.nodes[name]
            if node.op in ("matmul", "attention"):
                if ax < len(info.shape or ()) - 2:
                    found.add(origin)
                continue
            todo += [(o, oax, origin, d + 1)
                     for o, oax in _head_steps(graph, node, t, ax, downstream)]
    return found


def _head_steps(graph: Graph, node: Node, t: str, ax: int,
                downstream: bool) -> list[tuple[str, int]]:
    """The (tensor, axis) pairs one step of :func:`_head_axes` reaches from axis ``ax`` of
    ``t`` through ``node`` (its consumer, or its producer going upstream)."""
    shape = graph.shape(t) or ()
    first = node.inputs[0] if node.inputs else None  # (a producer may have no inputs)
    src, dst = (first, node.outputs[0]) if downstream else (node.outputs[0], first)
    if node.op == "reshape":  # follow axes a reshape passes through one-to-one
        xs, ys = graph.shape(src), graph.shape(dst)
        runs = _reshape_groups(tuple(xs), tuple(ys)) if xs and ys else None
        # one-to-one, or the outer axis of a merge (grouped-query attention's
        # (key/value heads, copies) -> heads)
        return [(dst, gj[0]) for gi, gj in runs or () if gi[:1] == [ax] and len(gj) == 1]
    if node.op == "expand":  # axes an expand passes unchanged (repeat_kv)
        off = len(graph.shape(dst) or ()) - len(shape)
        ok = (graph.shape(dst) or ())[ax + off:ax + off + 1] == (shape[ax],) != (1,)
        return [(dst, ax + off)] if ok else []
    if node.op in ("split", "unbind"):  # q, k, v cut from one fused projection
        axis = node.attrs["axis"] % len(graph.shape(node.inputs[0]) or (0,))
        drop = int(node.op == "unbind")  # unbind's outputs lack the axis
        if downstream and ax != axis:
            return [(o, ax - drop * (ax > axis)) for o in node.outputs]
        if not downstream and (drop or ax != axis):
            return [(node.inputs[0], ax + drop * (ax >= axis))]
        return []
    if node.op == "index":  # axes a slice passes whole (dynamo's unbind: Slice+Squeeze)
        xs = graph.shape(node.inputs[0]) or ()
        return [(dst, oy if downstream else e[0]) for oy, e in enumerate(node.attrs["map"])
                if e and tuple(e[1:]) == (0, xs[e[0]], 1) and (e[0] if downstream else oy) == ax]
    if node.op == "concat":  # axes other than the joined one (a KV cache's past keys)
        if ax == node.attrs["axis"] % len(graph.shape(node.outputs[0]) or (0,)):
            return []
        return [(o, ax) for o in (node.outputs if downstream else node.present_inputs())
                if graph.tensors[o].kind == ACTIVATION]
    if node.op not in _HEAD_WALK_OPS:
        return []
    if node.op == "transpose":
        perm = list(node.attrs["perm"])
        return [(dst, perm.index(ax) if downstream else perm[ax])]
    others = node.outputs if downstream else [
        x for x in node.present_inputs() if graph.tensors[x].kind == ACTIVATION]
    steps = []
    for o in others:
        shift = len(graph.shape(o) or ()) - len(shape)
        if 0 <= ax + shift and (graph.shape(o) or ())[ax + shift:ax + shift + 1] == (shape[ax],):
            steps.append((o, ax + shift))
    return steps


def _carrier_pair(gi: list[int], xs: tuple, gj: list[int], ys: tuple,
                  heads: set[tuple[str, int]] = frozenset(),
                  frozen: set[tuple[str, int]] = frozenset()):
    """Pick the input and output axes of a merged/split run that carry channel removals.

    Every flat element of the run has one index on each axis; tying the chosen input axis to the
    chosen output axis through those indices must not mix channels, so we take the pair with the
    fewest distinct (input index, output index) ties — a plain function such as channel -> group
    (GroupNorm as Reshape+InstanceNorm) or channel -> flattened block. On ties, an axis another
    rule froze already loses (``frozen``: e.g. the copies axis of grouped-query attention's
    expand, so that the key/value head axis carries), then an attention
    head axis (``heads``: ("x", axis) / ("y", axis) pairs, see :func:`_head_axes`) wins, so that
    heads are pruned whole (what attention kernels and `num_heads` need); then larger axes
    (shuffle groups over group count, channels over spatial). The other axes keep their size.
    """
    n = int(np.prod([xs[a] for a in gi]))
    flat = np.arange(n)

    def index_on(axes, shape, carrier):
        stride = int(np.prod([shape[a] for a in axes if a > carrier], dtype=np.int64))
        return (flat // stride) % shape[carrier]

    best = None
    for ci in gi:
        ii = index_on(gi, xs, ci)
        for cj in gj:
            pairs = np.unique(np.stack([ii, index_on(gj, ys, cj)], axis=1), axis=0)
            head = ("x", ci) in heads or ("y", cj) in heads
            stuck = (("x", ci) in frozen) + (("y", cj) in frozen)
            key = (len(pairs), stuck, not head, -(xs[ci] * ys[cj]), -ci, -cj)
            if best is None or key < best[0]:
                best = (key, ci, cj, pairs)
    return best[1], best[2], best[3]


def _couple_reshape(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = rel.graph.shape(x), rel.graph.shape(y)
    target = node.attrs.get("target")
    sizes_from = node.attrs.get("sizes_from") or {}
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # reshape_as: the output has the
        for ax in range(rel.rank(y)):                       # shape of this operand (run time)
            rel.same(node.inputs[1], ax, y, ax)
    groups = _reshape_groups(tuple(xs), tuple(ys)) if xs is not None and ys is not None else None
    if groups is None:
        rel.freeze_all(x, "reshape between shapes that do not factor")
        rel.freeze_all(y, "reshape between shapes that do not factor")
        return
    heads = None
    for gi, gj in groups:
        if not gi or not gj:
            for ax in gi:
                rel.freeze(x, ax, "size-1 axis")
            for ax in gj:
                rel.freeze(y, ax, "size-1 axis")
            continue
        if xs[gi[0]] is None:  # symbolic dimension passing through (batch)
            rel.same(x, gi[0], y, gj[0])
            continue
        one_to_one = len(gi) == 1 and len(gj) == 1
        read = sizes_from.get(gj[0]) if one_to_one else None  # (tensor, axis) read at run time
        rewritable = read is not None or target == "auto" or (
                      target is not None
                      and all(target[a] is not None for a in gj)
                      and sum(1 for a in gj if target[a] == -1) <= 1
                      and all(target[a] != 0 or (one_to_one and gi[0] == a) for a in gj))
        if not rewritable:
            for ax in gi:
                rel.freeze(x, ax, "reshape target computed at run time")
            for ax in gj:
                rel.freeze(y, ax, "reshape target computed at run time")
            continue
        if one_to_one:
            rel.same(x, gi[0], y, gj[0])
            if read is not None:  # the size follows its source: prune the two alike
                rel.same(read[0], read[1], y, gj[0])
            continue
        if heads is None:
            heads = {("x", a) for a in _head_axes(rel.graph, x, downstream=False)} | {
                ("y", a) for a in _head_axes(rel.graph, y, downstream=True)}
        frozen = {("x", a) for a in gi if Space(x, a) in rel.frozen} | {
            ("y", a) for a in gj if Space(y, a) in rel.frozen}
        ci, cj, pairs = _carrier_pair(gi, xs, gj, ys, heads, frozen)
        rel.link(x, ci, pairs[:, 0], y, cj, pairs[:, 1])
        for ax in gi:
            if ax != ci:
                rel.freeze(x, ax, "axis folded into another by a reshape")
        for ax in gj:
            if ax != cj:
                rel.freeze(y, ax, "axis folded into another by a reshape")


def _couple_transpose(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    for oy, ax in enumerate(node.attrs["perm"]):
        rel.same(x, ax, y, oy)


def _couple_expand(node: Node, rel: Relations) -> None:
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = rel.graph.shape(x), rel.graph.shape(y)
    off = len(ys) - len(xs)
    for ax in range(len(xs)):
        if xs[ax] == ys[ax + off] and xs[ax] != 1:
            rel.same(x, ax, y, ax + off)
        else:
            rel.freeze(x, ax, "expanded axis")
            rel.freeze(y, ax + off, "expanded axis")
    for ax in range(off):
        rel.freeze(y, ax, "expanded axis")
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # expand_as: the output has the
        for ax in range(rel.rank(y)):                      # shape of this operand (run time)
            rel.same(node.inputs[1], ax, y, ax)


def _couple_meta(node: Node, rel: Relations) -> None:
    """Shape arithmetic: reads sizes at run time, carries no channels. Activation operands are
    only measured, so their axes are left alone (marked described)."""
    for t in node.present_inputs():
        if rel.graph.tensors[t].kind == ACTIVATION:
            for ax in range(rel.rank(t)):
                rel.described.add(Space(t, ax))


def _couple_attention(node: Node, rel: Relations) -> None:
    """Fused scaled-dot-product attention: q [..., T, D], k [..., S, D], v [..., S, Dv]."""
    q, k, v, mask = (node.inputs + [None])[:4]
    y = node.outputs[0]
    _couple_batch_axes(rel, (q, k, v), y, "attention")
    rel.same(q, -2, y, -2)
    rel.same(k, -2, v, -2)
    rel.freeze(k, -2, "attention key axis (softmax)")
    rel.same(v, -1, y, -1)
    if node.attrs.get("scale") is not None:
        rel.same(q, -1, k, -1)
    else:
        why = "attention's default scale 1/sqrt(head size) depends on this axis"
        rel.freeze(q, -1, why)
        rel.freeze(k, -1, why)
    if mask is not None:  # a per-head bias (T5's relative positions) goes with its heads
        _couple_batch_axes(rel, (mask,), y, "attention mask")
        rel.freeze(mask, -2, "attention mask")
        rel.freeze(mask, -1, "attention mask")


def _cost_attention(node: Node, shape: ShapeFn) -> int:
    q, v, y = shape(node.inputs[0]), shape(node.inputs[2]), shape(node.outputs[0])
    s = v[-2] or 0
    return _numel(y[:-1]) * s * ((q[-1] or 0) + (v[-1] or 0))


def _couple_gather(node: Node, rel: Relations) -> None:
    """``y = x`` indexed along ``axis`` by an index tensor (``table[:, idx]``, ONNX Gather):
    ``y``'s shape is ``x``'s with that axis replaced by the index's axes. The other axes pass
    through (a per-head bias table keeps its head axis); the gathered axis, the axes the index
    brings and the index itself are frozen (the index values address the gathered axis)."""
    x, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    k, ri = node.attrs["axis"], rel.rank(idx)
    for ax in range(rel.rank(x)):
        if ax == k:
            rel.freeze(x, ax, "gathered axis")
        else:
            rel.same(x, ax, y, ax if ax < k else ax - 1 + ri)
    for j in range(ri):
        rel.freeze(y, k + j, "gathered axis")
    rel.freeze_all(idx, "gather indices")


def _couple_unknown(node: Node, rel: Relations) -> None:
    reason = node.attrs.get("reason") or f"no channel rule for op {node.source or node.op!r}"
    for t in node.present_inputs() + node.outputs:
        rel.freeze_all(t, reason)


# ---------------------------------------------------------------------------------------------
# cost rules
# ---------------------------------------------------------------------------------------------


def _cost_conv(node: Node, shape: ShapeFn) -> int:
    w = shape(node.inputs[1])
    macs = _numel(shape(node.outputs[0])) * _numel(w[1:])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        macs += 2 * _numel(shape(node.outputs[0]))
    return macs


def _cost_linear(node: Node, shape: ShapeFn) -> int:
    x = shape(node.inputs[0])
    macs = _numel(shape(node.outputs[0])) * ((x[-1] or 0) if x else 0)  # x: None if rank unknown
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        macs += 2 * _numel(shape(node.outputs[0]))
    return macs


def _cost_matmul(node: Node, shape: ShapeFn) -> int:
    a = shape(node.inputs[0])
    return _numel(shape(node.outputs[0])) * (a[-1] or 0) if a else 0


def _cost_norm(node: Node, shape: ShapeFn) -> int:
    return 2 * _out_elems(node, shape)


def _cost_pool(node: Node, shape: ShapeFn) -> int:
    return _numel(shape(node.inputs[0]))


# ---------------------------------------------------------------------------------------------
# rewrite rules
# ---------------------------------------------------------------------------------------------


def _rewrite_conv(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    g = int(node.attrs.get("groups", 1))
    if g == 1:
        return {}
    cin_old, cin_new = old(node.inputs[0])[1], new(node.inputs[0])[1]
    ng = g * cin_new // cin_old
    return {"groups": ng} if ng != g else {}


def _rewrite_groupnorm(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    g = int(node.attrs["groups"])
    c_old, c_new = old(node.inputs[0])[1], new(node.inputs[0])[1]
    ng = g * c_new // c_old
    return {"groups": ng} if ng != g else {}


def _rewrite_split(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    axis = node.attrs["axis"]
    sizes = [new(y)[axis] for y in node.outputs]
    return {"sizes": sizes} if sizes != [old(y)[axis] for y in node.outputs] else {}


def _rewrite_index(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    x, y = node.inputs[0], node.outputs[0]
    changed = False
    new_map = []
    for oy, entry in enumerate(node.attrs["map"]):
        if entry is None:
            new_map.append(None)
            continue
        ax, start, stop, step = entry
        k = kept(x, ax)
        if k is None:
            new_map.append(entry)
            continue
        ns = int(np.sum(k < start))
        ne = ns + new(y)[oy]
        changed = changed or (ns, ne) != (start, stop)
        new_map.append((ax, ns, ne, step))
    return {"map": new_map} if changed else {}


def _rewrite_pad(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    """A zero-padded axis that lost indices: the pads count the padded indices kept."""
    x, y = node.inputs[0], node.outputs[0]
    pads = list(node.attrs["pads"])
    r = len(pads) // 2
    for ax in range(r):
        k = kept(y, ax)
        if k is None or (pads[ax] == 0 and pads[ax + r] == 0):
            continue
        n = old(x)[ax]
        pads[ax], pads[ax + r] = int(np.sum(k < pads[ax])), int(np.sum(k >= pads[ax] + n))
    return {"pads": pads} if pads != list(node.attrs["pads"]) else {}


def _rewrite_expand(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    """A stored target shape names the size of every axis it does not leave to the input (torch
    -1, ONNX 1; ``None``: read at run time); those sizes follow the channels removed."""
    target = node.attrs.get("target")
    if not target:
        return {}
    os_, ns_ = old(node.outputs[0]), new(node.outputs[0])
    off = len(os_) - len(target)  # ONNX aligns a shorter target to the trailing axes
    out = [t if t in (None, -1, 1) or os_[i + off] == ns_[i + off] else int(ns_[i + off])
           for i, t in enumerate(target)]
    return {"target": out} if out != list(target) else {}


def _rewrite_pool(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    """A resize's stored ``sizes`` follow the channels removed (only axes that passed through,
    see :func:`_resized_axes`, can change)."""
    sizes = node.attrs.get("sizes")
    if not sizes:
        return {}
    y = node.outputs[0]
    os_, ns_ = old(y), new(y)
    axes = node.attrs.get("resize_axes") or range(len(sizes))
    out = [int(ns_[ax % len(os_)]) if t is not None and os_[ax % len(os_)] != ns_[ax % len(os_)]
           else t for ax, t in zip(axes, sizes)]
    return {"sizes": out} if out != list(sizes) else {}


def _rewrite_reduce(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    """A mean over an axis that lost (zero) channels keeps the original divisor: ``scale`` =
    new count / old count multiplies its result (RMSNorm then equals the zeroed original)."""
    if node.attrs.get("fn") != "mean":
        return {}
    xo, xn = old(node.inputs[0]), new(node.inputs[0])
    scale = 1.0
    for ax in _reduced_axes(node, len(xo)):
        if xo[ax] != xn[ax]:
            scale *= xn[ax] / xo[ax]
    return {"scale": scale} if scale != 1.0 else {}


def _rewrite_layernorm(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    """A fused RMSNorm whose axis went from n to n' (zero) channels: ``eps`` x n/n' and the
    output x sqrt(n/n') give the zeroed original's values (sqrt(S/n' + eps n/n') is
    sqrt(n/n') times sqrt(S/n + eps) for the same sum of squares S)."""
    if node.attrs.get("fn") != "rms":
        return {}
    n, m = old(node.inputs[0])[-1], new(node.inputs[0])[-1]
    if n is None or m is None or n == m:
        return {}
    return {"eps": node.attrs["eps"] * n / m, "scale": math.sqrt(n / m), "normalized": [int(m)]}


def _rewrite_reshape(node: Node, old: ShapeFn, new: ShapeFn, kept) -> dict[str, Any]:
    target = node.attrs.get("target")
    if target is None or target == "auto":
        return {}
    os_, ns_ = old(node.outputs[0]), new(node.outputs[0])
    out = []
    for i, t in enumerate(target):
        if t in (-1, 0) or t is None or os_[i] == ns_[i]:
            out.append(t)
        else:
            out.append(int(ns_[i]))
    return {"target": out} if out != list(target) else {}


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

OPS: dict[str, OpDef] = {
    d.name: d
    for d in [
        OpDef("conv", "convolution; grouped/depthwise convs lose whole groups (`groups` rewritten)",
              _couple_conv, _cost_conv, _rewrite_conv, weighted=True, operands=("x", "weight", "bias")),
        OpDef("linear", "fully connected layer (Linear, Gemm, MatMul by a stored weight)",
              _couple_linear, _cost_linear, weighted=True, operands=("x", "weight", "bias")),
        OpDef("matmul", "product of two activations (attention scores); contracted axes coupled",
              _couple_matmul, _cost_matmul, operands=("a", "b")),
        OpDef("elementwise", "add/sub/mul/div/… with broadcasting (residual adds, SE gates)",
              _couple_broadcast),
        OpDef("unary", "activations, dropout, casts, identity", _couple_unary),
        OpDef("batchnorm", "BatchNorm; statistics and affine follow the channel",
              _couple_batchnorm, _cost_norm, operands=("x", "scale", "bias", "mean", "var")),
        OpDef("instancenorm", "InstanceNorm; per-channel, affine follows",
              _couple_instancenorm, _cost_norm, operands=("x", "scale", "bias")),
        OpDef("groupnorm", "GroupNorm; whole groups only (`num_groups` rewritten)",
              _couple_groupnorm, _cost_norm, _rewrite_groupnorm, operands=("x", "scale", "bias")),
        OpDef("layernorm", "LayerNorm/RMSNorm; normalised axes are frozen (exactness), except "
              "an RMSNorm's last axis over a residual stream (eps and output rescaled)",
              _couple_layernorm, _cost_norm, _rewrite_layernorm, operands=("x", "scale", "bias")),
        OpDef("pool", "max/avg/global/adaptive pooling, resize", _couple_pool, _cost_pool,
              _rewrite_pool),
        OpDef("pad", "constant/reflect/edge padding; unpadded axes pass through, zero-padded "
              "axes (option-A shortcut channels) keep offsets; pads rewritten", _couple_pad,
              rewrite=_rewrite_pad),
        OpDef("reduce", "mean/sum/max over axes; reduced axes frozen, except a last axis "
              "summed as squares of a residual stream (RMSNorm: the mean keeps its divisor)",
              _couple_reduce, _cost_pool, _rewrite_reduce),
        OpDef("softmax", "softmax; its axis is frozen", _couple_softmax),
        OpDef("attention", "fused scaled-dot-product attention; value/head axes follow, query/key "
              "head size only with an explicit scale", _couple_attention, _cost_attention,
              operands=("q", "k", "v", "mask")),
        OpDef("concat", "concatenation; channels keep their offsets", _couple_concat),
        OpDef("split", "split/chunk; sizes rewritten", _couple_split, rewrite=_rewrite_split),
        OpDef("unbind", "unbind (q, k, v from a fused projection); the unbound axis is frozen",
              _couple_unbind),
        OpDef("index", "slicing with unit step; bounds rewritten", _couple_index, rewrite=_rewrite_index),
        OpDef("gather", "indexing one axis by an index tensor (a per-head bias table, a token "
              "embedding); the other axes follow", _couple_gather),
        OpDef("reshape", "reshape/view/flatten/squeeze; channels follow where axes factor cleanly "
              "(sizes read from a tensor at run time follow its channels)",
              _couple_reshape, rewrite=_rewrite_reshape),
        OpDef("transpose", "transpose/permute; channel axes follow", _couple_transpose),
        OpDef("expand", "broadcast to a shape", _couple_expand, rewrite=_rewrite_expand),
        OpDef("meta", "shape arithmetic (sizes read at run time)", _couple_meta),
        OpDef("unknown", "anything else: every axis it touches is frozen", _couple_unknown),
    ]
}


#: attributes of a ``unary`` node that passes its input through unchanged in eval mode
#: (nn.Identity, dropout, stochastic depth; ONNX Identity, Dropout)
IDENTITY = {"fn": "identity"}


def batchnorm_scale(node: Node, read) -> np.ndarray | None:
    """A BatchNorm's per-channel scale ``γ / √(var + ε)`` (γ absent: 1); None without a stored
    variance. ``read(name)`` gives a parameter's value."""
    _, gamma, _, _, var = (node.inputs + [None] * 5)[:5]
    if var is None:
        return None
    v = np.asarray(read(var), dtype=np.float64)
    g = np.asarray(read(gamma), dtype=np.float64) if gamma is not None else 1.0
    return g / np.sqrt(v + float(node.attrs.get("eps", 1e-5)))


def is_identity(node: Node) -> bool:
    return node.op == "unary" and node.attrs.get("fn") == "identity"


def weighted_nodes(graph: Graph) -> list[Node]:
    """Nodes with a learned weight operand (conv/linear), in topological order.

    Their ordinal in this list is stable across backends of the same model, because both
    frontends list nodes in execution order; plans use it to name channel groups.
    """
    return [n for n in graph if OPS[n.op].weighted]
