"""Training-free healing by least-squares layer reconstruction.

A layer that lost input channels (the output projection after pruned heads, the down projection
after pruned MLP units, the conv after a pruned conv), or whose input drifted because of an
earlier change, is refitted on calibration data so that,
fed the pruned model's activations ``X̃`` (kept channels only), it reproduces the original
model's output ``Y`` as closely as possible:

    [W', c] = argmin ‖ [X̃, 1] · [W', c]ᵀ − Y ‖² + λ‖W' − W‖²

(``X̃`` as im2col patches for a conv; the ridge ``λ‖W' − W‖²`` pulls towards the current
weights, its strength chosen on calibration samples held out of the fit). The
intercept ``c`` goes into the layer's bias, so the pruned channels' mean contribution is
restored as with bias compensation, and what they carried that the kept channels can express
is restored too. This is the "mask tuning" step of training-free transformer pruning (Kwon et
al., 2022), done here for any linear layer or ungrouped convolution on both backends; a
depthwise convolution is refitted channel by channel (:mod:`idapgraph.passes.channelwise`). A
layer whose output reaches a residual add is fitted to ``Y`` plus the shortcut's drift
(:class:`Shortcut`), so the add, not the layer, reproduces the original's value. A
fit is applied only where it lowers the layer's residual on calibration samples held out of it
(two folds: fitted on one, checked on the other).

The pass runs no model: :class:`Targets` collects the original outputs, :class:`Normal`
accumulates the normal equations from the pruned model's inputs, :func:`solve` fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..ir.graph import PARAM, Graph
from ..ir.ops import batchnorm_scale, is_identity, weight_axes, weighted_nodes
from ..ir.plan import Rewrite
from . import channelwise


@dataclass(frozen=True)
class Site:
    """A layer to refit: its input ``x``, output ``y`` and parameters."""

    node: str
    x: str
    y: str
    weight: str
    bias: str | None
    conv: dict | None  # stride/pads/dilation of a conv; None for a linear layer
    out_axis: int
    in_axis: int
    out_kept: np.ndarray | None  # original indices of the kept output channels (None: all)
    head: bool = False  # its output is the model's (a classifier): see MIN_ROWS_PER_FEATURE
    shortcut: Shortcut | None = None  # the residual add its output reaches (see Shortcut)


@dataclass(frozen=True)
class Shortcut:
    """The residual add a site's output reaches through per-channel affine steps only
    (BatchNorms, added biases): ``tensor`` is the add's other operand, ``norms`` the BatchNorm
    nodes on the way. Fitted to the original's layer output ``Y``, the layer leaves the add's
    output off by what the shortcut drifted (``r - r̃``: the earlier cuts' error carried along
    the residual stream); fitted to ``Y + (r - r̃)/a`` (``a`` the norms' per-channel scale) it
    cancels what of that drift its inputs can predict, and the add computes the original's
    value as closely as the layer can make it (:func:`compensated`)."""

    tensor: str
    norms: tuple[str, ...] = ()


# inputs (features) of a layer's fit above which it is not refitted: 1,024 channels × 3×3. Its
# (d+1)² float64 Gram is 680 MB, and a fit holds about five (two folds, their sum, the solve's
# copies); FCN-ResNet50's 3×3 head over 2,048 channels (18,432 features) took 14 GB
MAX_FEATURES = 9216


def features(graph: Graph, site: Site, rewrite: Rewrite | None = None) -> int:
    """How many inputs the fit of ``site`` has after ``rewrite`` (None: as the graph stands;
    per output channel of a depthwise conv: its kernel)."""
    w = graph.shape(site.weight)
    per = int(np.prod(w[2:], dtype=np.int64)) if site.conv is not None else 1
    if _depthwise(site):
        return per
    ch = 1 if site.conv is not None else (graph.tensors[site.x].rank or 0) - 1
    shape = graph.shape(site.x) if rewrite is None else rewrite.new_shapes.get(
        site.x, graph.shape(site.x))
    return int(shape[ch]) * per  # sites are ungrouped convs (or depthwise) and linear layers


def sites(graph: Graph, rewrite: Rewrite, drifted: bool = True,
          wide: list[str] | None = None) -> list[Site]:
    """Linear layers and ungrouped or depthwise 2-D convolutions whose input channels were
    removed or (``drifted``) whose input is computed from a tensor the rewrite changed, in
    topological order. Refitting the later layers too (each to the original's output of that
    layer, its ridge chosen on held-out samples) measured better than refitting only the layers
    that lost channels: CIFAR-10 ResNet-56 top-1 81.1 -> 81.8 % at 0.7 FLOPs and 76.0 -> 78.1 %
    at 0.5; EfficientNet-Lite0 64 -> 67 % at 0.8; MiniLM embedding cosine 0.938 -> 0.942 at 0.7
    and 0.848 -> 0.863 at 0.5 (BENCHMARKS.md, "Least-squares healing checked on held-out
    samples"). Depthwise convs too: EfficientNet-Lite0 76.6 -> 78.4 % at 0.7 (nineteenth
    session). Layers with more than :data:`MAX_FEATURES` inputs are left out (their names
    appended to ``wide`` when given)."""
    out, changed = [], _drifted(graph, rewrite) if drifted else set()
    order = {n.name: i for i, n in enumerate(graph)}
    for node in weighted_nodes(graph):
        s = site(graph, node) or depthwise_site(graph, node)
        if s is None or _tied(graph, s.weight, node.name):
            continue  # (tied: refitting would change the other readers too, an embedding)
        ch = 1 if node.op == "conv" else (graph.tensors[s.x].rank or 0) - 1
        if rewrite.kept(s.x, ch) is None and s.x not in changed:
            continue
        if features(graph, s, rewrite) > MAX_FEATURES:
            if wide is not None:
                wide.append(node.name)
            continue
        y = s.y
        kept = rewrite.kept(y, 1 if node.op == "conv" else (graph.tensors[y].rank or 0) - 1)
        out.append(replace(s, out_kept=kept, head=_head(graph, y),
                           shortcut=shortcut_of(graph, s.x, y, order)))
    return out


def shortcut_of(graph: Graph, x: str, y: str, order: dict[str, int]) -> Shortcut | None:
    """The :class:`Shortcut` of a layer with input ``x`` and output ``y``: ``y`` followed,
    each step its only reader, by BatchNorms, identities and additions of a stored bias, then
    added to another tensor of its shape that ``x`` is computed from (so that stepping a model
    to ``x`` has computed it; not a projection shortcut computed after the layer). ``order``:
    every node's position in the graph's topological order."""
    norms, t = [], y
    while t not in graph.outputs and len(graph.tensors[t].consumers) == 1:
        n = graph.nodes[graph.tensors[t].consumers[0]]
        ins = n.present_inputs()
        if n.op == "batchnorm" and ins[0] == t and len(ins) == 5 and \
                all(graph.tensors[p].kind == PARAM for p in ins[1:]):
            norms.append(n.name)
        elif is_identity(n):
            pass
        elif n.op == "elementwise" and n.attrs.get("fn") == "add" and len(ins) == 2 and \
                t in ins and ins[0] != ins[1]:
            other = _source(graph, ins[1] if ins[0] == t else ins[0])
            if graph.tensors[other].kind != PARAM:  # else a stored bias: on to its reader
                same = graph.shape(other) is not None and graph.shape(other) == graph.shape(t)
                ok = same and _upstream(graph, other, x, order)
                return Shortcut(other, tuple(norms)) if ok else None
        else:
            return None
        t = n.outputs[0]
    return None


def _upstream(graph: Graph, r: str, x: str, order: dict[str, int]) -> bool:
    """Whether ``x`` is ``r`` or computed from it (walked back from ``x``, never past the
    node that makes ``r``)."""
    made_by = graph.tensors[r].producer
    floor = -1 if made_by is None else order[made_by]
    seen, stack = set(), [x]
    while stack:
        t = stack.pop()
        if t == r:
            return True
        p = graph.tensors[t].producer
        if p is None or p in seen or order[p] <= floor:
            continue
        seen.add(p)
        stack.extend(i for i in graph.nodes[p].present_inputs() if graph.tensors[i].kind != PARAM)
    return False


def _source(graph: Graph, t: str) -> str:
    """``t`` followed back through identities (nn.Identity, dropout in eval)."""
    while (p := graph.tensors[t].producer) is not None and is_identity(graph.nodes[p]):
        t = graph.nodes[p].inputs[0]
    return t


def norm_scale(graph: Graph, node: str, get) -> np.ndarray:
    """A BatchNorm's per-channel scale ``γ / √(var + ε)``; ``get`` reads a parameter's value."""
    return batchnorm_scale(graph.nodes[node], get)


#: a channel whose norms' scale is below this share of the median's is not compensated (its
#: target ``(r - r̃)/a`` would be huge for an output the add barely sees)
MIN_SCALE = 0.01


def compensated(site: Site, y: np.ndarray, r_orig: np.ndarray, r_pruned: np.ndarray,
                scale: np.ndarray | None) -> np.ndarray:
    """A site's target (the original's output ``y``, one batch) shifted by its shortcut's
    drift ``(r_orig - r_pruned) / scale`` on the kept channels (see :class:`Shortcut`);
    ``scale`` per kept channel (None: 1). ``y`` itself where the shapes do not line up."""
    axis = 1 if site.conv is not None else -1
    ro = r_orig if site.out_kept is None else np.take(r_orig, site.out_kept, axis=axis)
    if ro.shape != np.shape(r_pruned) or np.ndim(y) != ro.ndim:
        return y
    a = np.ones(ro.shape[axis]) if scale is None else np.asarray(scale, dtype=np.float64)
    if a.shape != (ro.shape[axis],):
        return y
    big = np.abs(a) >= MIN_SCALE * np.median(np.abs(a))
    inv = np.where(big, 1.0 / np.where(big, a, 1.0), 0.0)
    view = [1] * ro.ndim
    view[axis] = -1
    idx = [slice(None)] * ro.ndim
    idx[axis] = slice(None) if site.out_kept is None else site.out_kept
    out = np.array(y, dtype=np.float32)
    out[tuple(idx)] += ((ro - r_pruned) * inv.reshape(view)).astype(np.float32)
    return out


def site(graph: Graph, node) -> Site | None:
    """The refittable layer of a weighted node (all output channels): a linear layer or an
    ungrouped 2-D convolution with explicit pads, its weight of rank 2 or more; else None."""
    x, w = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or graph.tensors[w].rank is None or graph.tensors[w].rank < 2:
        return None
    conv = None
    if node.op == "conv":
        if int(node.attrs.get("groups", 1)) != 1 or graph.tensors[w].rank != 4 or \
                "pads" not in node.attrs:
            return None
        conv = {k: list(node.attrs[k]) for k in ("stride", "pads", "dilation")}
    out_axis, in_axis = weight_axes(node)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return Site(node.name, x, node.outputs[0], w, bias, conv, out_axis, in_axis, None)


def depthwise_site(graph: Graph, node) -> Site | None:
    """The refittable layer of a depthwise 2-D convolution (one input channel per output
    channel, ``groups`` = channels, explicit pads), refitted channel by channel
    (:mod:`idapgraph.passes.channelwise`); else None."""
    if node.op != "conv" or "pads" not in node.attrs or len(node.inputs) < 2:
        return None
    shape = graph.shape(node.inputs[1])
    if shape is None or len(shape) != 4 or shape[1] != 1 or \
            int(node.attrs.get("groups", 1)) != shape[0] or shape[0] < 2:
        return None
    conv = {k: list(node.attrs[k]) for k in ("stride", "pads", "dilation")}
    conv["depthwise"] = True
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return Site(node.name, node.inputs[0], node.outputs[0], node.inputs[1], bias, conv, 0, 1,
                None)


def _depthwise(site: Site) -> bool:
    return bool(site.conv and site.conv.get("depthwise"))


def as_theta(w, b, out_axis: int) -> np.ndarray:
    """A layer's parameters as ``θ = [Wᵀ; b]`` (features + 1, out), float64, the weight in
    the backend's layout (``out_axis``), ``b`` None for none."""
    w = np.asarray(w, dtype=np.float64)
    w2 = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)
    b0 = np.zeros(w2.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    return np.concatenate([w2.T, b0[None]], axis=0)


def _head(graph: Graph, y: str) -> bool:
    """``y`` is a model output, or read only by parameter-free nodes whose outputs are."""
    if y in graph.outputs:
        return True
    cons = [graph.nodes[c] for c in graph.tensors[y].consumers]
    return bool(cons) and all(
        all(o in graph.outputs for o in n.outputs) and
        all(graph.tensors[t].kind != PARAM for t in n.present_inputs()) for n in cons)


def _tied(graph: Graph, weight: str, node: str) -> bool:
    """``weight`` is also read by a node other than ``node`` or a layout op feeding it (e.g. a
    language model's head tied to its input embedding)."""
    for c in graph.tensors[weight].consumers:
        n = graph.nodes[c]
        own_view = n.op in ("transpose", "reshape", "unary") and all(
            graph.tensors[o].consumers == [node] for o in n.outputs)
        if c != node and n.op != "meta" and not own_view:
            return True
    return False


def _drifted(graph: Graph, rewrite: Rewrite) -> set[str]:
    """Tensors whose values the rewrite can change: the ones it slices and everything computed
    from them."""
    out = set(rewrite.keep) | set(rewrite.removed)
    for node in graph:
        if not out.isdisjoint(node.present_inputs()):
            out.update(node.outputs)
    return out


def post_bias(graph: Graph, site: Site) -> str | None:
    """The stored bias added to the site's output by a separate Add (ONNX MatMul + Add)."""
    if site.bias is not None:
        return None
    cons = graph.tensors[site.y].consumers
    if len(cons) != 1 or site.y in graph.outputs:
        return None
    n = graph.nodes[cons[0]]
    if n.op != "elementwise" or n.attrs.get("fn") != "add":
        return None
    other = [t for t in n.present_inputs() if t != site.y]
    out = graph.shape(site.y)
    if len(other) == 1 and graph.tensors[other[0]].kind == PARAM and \
            graph.shape(other[0]) == (out[-1],):
        return other[0]
    return None


def kernel(graph: Graph, site: Site) -> tuple | None:
    return tuple(graph.shape(site.weight)[2:]) if site.conv is not None else None


# output positions per calibration sample a conv's fit keeps: larger maps are subsampled on a
# regular spatial grid (neighbouring pixels carry nearly the same patch): ResNet-56's healing
# 12.3 -> 9.9 s, held-out top-1 within 0.3 points (BENCHMARKS.md)
POSITIONS = 64


def _grid(site: Site, out_shape) -> int:
    """The spatial stride a conv site's rows are taken at (1: every output pixel), from its
    output's shape (see :func:`grid_of_input` for its input's)."""
    if site.conv is None or len(out_shape) != 4:
        return 1
    return max(1, int(np.sqrt(out_shape[2] * out_shape[3] / POSITIONS)))


def grid_of_input(site: Site, x_shape) -> int:
    """:func:`_grid` from a conv site's input shape (its output's spatial size as the stride
    leaves it, about)."""
    if site.conv is None or len(x_shape) != 4:
        return 1
    sh, sw = site.conv["stride"]
    return _grid(site, (x_shape[0], x_shape[1], x_shape[2] // sh, x_shape[3] // sw))


def _rows(a: np.ndarray, site: Site, kernel: tuple | None = None, grid: int = 1) -> np.ndarray:
    """Activations as a (samples, features) float32 matrix: a linear layer's input/output
    flattened over leading axes; a conv's input as im2col patches (``kernel``), its output per
    pixel, both at every ``grid``-th output row and column."""
    a = np.asarray(a, dtype=np.float32)
    if site.conv is None:
        return a.reshape(-1, a.shape[-1])
    if kernel is None:  # conv output (N, C, H, W) -> (N*H*W, C)
        return np.moveaxis(a[:, :, ::grid, ::grid], 1, -1).reshape(-1, a.shape[1])
    p, (sh, sw), (dh, dw) = site.conv["pads"], site.conv["stride"], site.conv["dilation"]
    a = np.pad(a, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    kh, kw = kernel
    win = np.lib.stride_tricks.sliding_window_view(a, ((kh - 1) * dh + 1, (kw - 1) * dw + 1),
                                                   axis=(2, 3))
    win = win[:, :, ::sh * grid, ::sw * grid, ::dh, ::dw]
    n, c, ho, wo = win.shape[:4]  # rows (n, y, x), features (c, ky, kx) as im2col orders them
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


class Targets:
    """Reducer over the original model: every batch's outputs ``Y`` of the sites, in order."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.batches: list[dict[str, np.ndarray]] = []

    @property
    def tensors(self) -> list[str]:
        return sorted({s.y for s in self.sites} | _shortcuts(self.sites))

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        self.batches.append({t: np.asarray(values[t], dtype=np.float32) for t in self.tensors
                             if t in values})


class Normal:
    """Reducer over the pruned model: normal equations ``[X̃,1]ᵀ[X̃,1]``, ``[X̃,1]ᵀY`` and
    ``ΣY²`` per site, pairing each batch with the original's outputs of the same batch, in two
    folds of calibration samples (alternate batches, or the two halves of a single batch) so
    :func:`solve` can check a fit on samples it was not fitted to."""

    def __init__(self, sites: list[Site], targets: Targets, kernels: dict[str, tuple],
                 tmatmul=None, solve=None, scales: dict | None = None) -> None:
        self.sites, self.targets, self.kernels = sites, targets, kernels
        self.scales = scales or {}  # per site with a shortcut: its norms' scale (None: 1)
        self.tmatmul = tmatmul or _tmatmul  # aᵀb (a backend's may be faster: Model.tmatmul)
        self.solve = solve or np.linalg.solve  # a⁻¹b, a positive definite (Model.solve)
        self.i = 0
        self.folds: dict[str, list[Sums]] = {}

    @property
    def tensors(self) -> list[str]:
        return sorted({s.x for s in self.sites} | _shortcuts(self.sites))

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        """One batch of the pruned model: ``values`` holds the sites' inputs and, where a
        site's target is to cancel its shortcut's drift, the shortcut's value (the targets'
        batch holds the original's)."""
        ref = self.targets.batches[self.i]
        self.i += 1
        for s in self.sites:
            if s.x not in values or s.y not in ref:
                continue
            grid = _grid(s, np.shape(ref[s.y]))
            x = _rows(values[s.x], s, self.kernels.get(s.node), grid)
            y = _rows(self._target(s, ref, values), s, grid=grid)
            if s.out_kept is not None:
                y = y[:, s.out_kept]
            if x.shape[0] != y.shape[0]:
                continue
            folds = self.folds.setdefault(s.node, [_sums(s, x.shape[1], y.shape[1])
                                                   for _ in "ab"])
            for f, rows in _fold_rows(x.shape[0], np.shape(values[s.x])[0], self.i - 1,
                                      len(self.targets.batches)):
                folds[f].add(x[rows], y[rows], self.tmatmul)

    def _target(self, s: Site, ref: dict, values: dict) -> np.ndarray:
        sc = s.shortcut
        if sc is None or sc.tensor not in ref or sc.tensor not in values:
            return ref[s.y]
        return compensated(s, ref[s.y], ref[sc.tensor], values[sc.tensor], self.scales.get(s.node))

    def total(self, node: str) -> Sums | None:
        """Both folds' sums together (None: the site saw no batch)."""
        folds = self.folds.get(node)
        return None if folds is None else folds[0] + folds[1]


def _shortcuts(sites: list[Site]) -> set[str]:
    return {s.shortcut.tensor for s in sites if s.shortcut is not None}


def _sums(site: Site, features: int, out: int):
    """Empty sums for one fold of ``site``: per channel for a depthwise conv."""
    return channelwise.ChannelSums(out, features // out) if _depthwise(site) else \
        Sums(features, out)


def _fold_rows(rows: int, samples: int, batch: int, batches: int):
    """(fold, row slice) pairs of one batch: with several batches, whole batches alternate
    between the folds; one batch of several samples splits at its middle sample (rows are
    ordered by sample; views, no copy)."""
    if batches == 1 and samples > 1 and rows % samples == 0:
        cut = (samples + 1) // 2 * (rows // samples)
        return [(0, slice(0, cut)), (1, slice(cut, rows))]
    return [(batch % 2, slice(0, rows))]


class Sums:
    """Normal-equation sums of one site over some rows: ``[X,1]ᵀ[X,1]``, ``[X,1]ᵀY``, ``ΣY²``
    (float64)."""

    def __init__(self, d: int, out: int) -> None:
        self.gram, self.cross, self.yy = np.zeros((d + 1, d + 1)), np.zeros((d + 1, out)), 0.0

    def add(self, x: np.ndarray, y: np.ndarray, tmatmul) -> None:
        if x.shape[0]:
            _add_augmented(self.gram, self.cross, x, y, tmatmul)
            self.yy += float(np.square(y).sum(dtype=np.float64))

    def __add__(self, other: Sums) -> Sums:
        s = Sums(0, 0)
        s.gram, s.cross, s.yy = self.gram + other.gram, self.cross + other.cross, \
            self.yy + other.yy
        return s

    @property
    def rows(self) -> float:
        return float(self.gram[-1, -1])

    @property
    def features(self) -> int:
        return self.gram.shape[0] - 1

    def residual(self, theta: np.ndarray) -> float:
        """``‖[X,1]θ − Y‖²`` from the sums."""
        return float(np.sum(theta * (self.gram @ theta)) - 2 * np.sum(theta * self.cross)
                     + self.yy)


def _tmatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.T @ b


def _add_augmented(gram: np.ndarray, cross: np.ndarray, x: np.ndarray, y: np.ndarray,
                   tmatmul=_tmatmul) -> None:
    """Add one batch's ``[x, 1]ᵀ[x, 1]`` to ``gram`` and ``[x, 1]ᵀ y`` to ``cross`` (float64
    accumulators, in place): the products in float32 BLAS (a batch's sums are short), the
    batches summed in float64."""
    add_gram(gram, x, tmatmul)
    d = x.shape[1]
    cross[:d] += tmatmul(x, y)
    cross[d] += y.sum(axis=0, dtype=np.float64)


def add_gram(gram: np.ndarray, x: np.ndarray, tmatmul=_tmatmul) -> None:
    """Add one batch's ``[x, 1]ᵀ[x, 1]`` to ``gram`` (float64, in place)."""
    d = x.shape[1]
    gram[:d, :d] += tmatmul(x, x)
    s = x.sum(axis=0, dtype=np.float64)
    gram[:d, d] += s
    gram[d, :d] += s
    gram[d, d] += x.shape[0]


@dataclass
class Fit:
    site: Site
    weight: np.ndarray  # (out, features) in the layer's feature order
    intercept: np.ndarray  # (out,)
    residual_before: float  # relative to ‖Y‖², with the current weights
    residual_after: float


#: The model's output layer (``Site.head``: a classifier, whose outputs' argmax is what a user
#: reads) is refitted only where its calibration rows at least match its input features. With
#: fewer the fit is underdetermined, only the ridge holds it, and the held-out squared error
#: does not see the top-1 harm: EfficientNet-Lite0's classifier (640 inputs left at 0.7 FLOPs,
#: 200 calibration images of 200 classes) refitted to residual 0.52 -> 0.07, weights moved
#: 70 %, held-out residual 0.52 -> 0.50, and the model kept 62.0 % top-1 on the 800 other
#: classes' images; left as it was, 74.5 %. Inner layers keep their underdetermined refits,
#: checked on held-out samples: MiniLM compressed on 32 calibration sentences (its MLP down
#: projections have 1,536 inputs) keeps embedding cosine 0.800 (tests/test_minilm.py), 0.746
#: with every layer short of rows left as it was.
MIN_ROWS_PER_FEATURE = 1.0


def underdetermined(normal: Normal, site: Site) -> str | None:
    """Why the output layer ``site`` is not refitted for lack of calibration rows (None: it
    has enough, or is not the model's output layer)."""
    total = normal.total(site.node)
    if total is None or not site.head:
        return None
    d = total.features
    if total.rows >= MIN_ROWS_PER_FEATURE * d:
        return None
    return f"{site.node} not refitted: {total.rows:.0f} calibration rows for {d} inputs"


def rows_per_input(normal: Normal, site: Site) -> float | None:
    """The calibration rows of ``site``'s fit per input feature (None: nothing gathered)."""
    total = normal.total(site.node)
    return None if total is None else total.rows / max(total.features, 1)


#: A fit with fewer calibration rows than this per input feature is reported as short of data
#: (:func:`short_rows`). Not a guard: such fits still apply where they beat the current weights
#: on held-out rows. Where more calibration samples were measured to help: EfficientNet-Lite0
#: at 0.7 FLOPs (the last block's 1,152-input 1x1 conv on 7x7 maps gets 8.5 rows per input from
#: 200 images, stage 6's pruned ones 11-12) kept 80.2 % top-1 calibrated on 200 images and
#: 81.7 % on 400, on 600 images neither used (BENCHMARKS.md, twenty-sixth session).
THIN_ROWS = 10.0
SHORT = "calibration data short"  # how short_rows's note starts


def short_rows(rows: dict[str, float]) -> str | None:
    """A note on the fits (layer -> calibration rows per input feature) below
    :data:`THIN_ROWS`, or None."""
    thin = sorted((v, k) for k, v in rows.items() if v < THIN_ROWS)
    if not thin:
        return None
    return (f"{SHORT} for {len(thin)} of {len(rows)} least-squares fits (fewer than "
            f"{THIN_ROWS:g} rows per input; fewest: {thin[0][1]}, {thin[0][0]:.3g}): more "
            "calibration samples usually help")


def solve(site: Site, normal: Normal, current_w: np.ndarray, current_b: np.ndarray | None,
          has_intercept: bool) -> Fit | None:
    """Fit one site from its normal equations; ``current_w`` in the backend's layout. The ridge
    pulls the weights towards the current ones, and its strength is chosen on calibration
    samples held out of the fit (:func:`_ridge`); None where no strength gives a
    lower held-out residual than the current weights, or where the model's output layer has
    fewer calibration rows than inputs (:func:`underdetermined`; the layer is then left as it
    is)."""
    folds, total = normal.folds.get(site.node), normal.total(site.node)
    if total is None or not total.yy or underdetermined(normal, site):
        return None
    theta0 = as_theta(current_w, current_b, site.out_axis)
    d = theta0.shape[0] - 1
    if total.features != d:
        return None
    before = total.residual(theta0)
    if _depthwise(site):
        theta = channelwise.solve(folds, total, theta0.T, has_intercept, RIDGES)
        return None if theta is None else Fit(site, theta[:, :d], theta[:, d], before / total.yy,
                                              total.residual(theta.T) / total.yy)
    lam = _ridge(folds, theta0, has_intercept, normal.solve)
    if lam is None:
        return None
    theta = _ridge_fit(total, theta0, lam * _scale(total, d), has_intercept, normal.solve)
    if theta is None:
        return None
    return Fit(site, theta[:d].T, theta[d], before / total.yy, total.residual(theta) / total.yy)


# ridge strengths tried, relative to the Gram matrix's mean diagonal (per calibration row)
RIDGES = (1e-4, 1e-2, 1.0, 100.0)


def _scale(sums: Sums, d: int) -> float:
    return float(np.mean(np.diag(sums.gram)[:d])) if d else 0.0


def _ridge(folds: list[Sums], theta0: np.ndarray, has_intercept: bool,
           solve=np.linalg.solve) -> float | None:
    """The ridge strength of ``RIDGES`` whose fit on the first fold best predicts the second,
    if that beats ``theta0`` there; None otherwise. The search walks up from the smallest
    strength until the held-out residual stops falling (2-3 fits for most layers; each is a
    factorisation of the Gram matrix, the cost of the whole refit on wide convs). With one
    fold empty (a single calibration sample): the smallest, unchecked. Measured:
    EfficientNet-Lite0's classifier (1,280 inputs, 200 calibration images) refitted with a
    fixed small ridge reproduced the calibration logits (error 7e-10); the model kept 29.5 %
    top-1 on held-out images at 0.8 FLOPs, 71.75 % with this choice."""
    fit_on, held = folds
    if min(fit_on.rows, held.rows) == 0:
        return RIDGES[0]
    d = theta0.shape[0] - 1
    best, best_err = None, held.residual(theta0)
    for lam in RIDGES:
        theta = _ridge_fit(fit_on, theta0, lam * _scale(fit_on, d), has_intercept, solve)
        err = float("inf") if theta is None else held.residual(theta)
        if err < best_err:
            best, best_err = lam, err
        elif best is not None:
            break
    return best


def _ridge_fit(sums: Sums, theta0: np.ndarray, lam: float, has_intercept: bool,
               solve=np.linalg.solve):
    """``argmin ‖[X,1]θ − Y‖² + lam‖W − W0‖²`` (the intercept unpenalised; fixed at ``theta0``'s
    without one); None where the system is singular."""
    d = theta0.shape[0] - 1
    reg = sums.gram.copy() if has_intercept else sums.gram[:d, :d].copy()
    reg[np.arange(d), np.arange(d)] += lam
    rhs = sums.cross.copy()
    rhs[:d] += lam * theta0[:d]
    if not has_intercept:
        rhs = rhs[:d] - np.outer(sums.gram[:d, d], theta0[d])
    try:
        theta = solve(reg, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(theta)):
        return None
    return theta if has_intercept else np.concatenate([theta, theta0[d:]], axis=0)


def weight_update(fit: Fit, like: np.ndarray) -> np.ndarray:
    """The fitted weight in the layout and dtype of ``like`` (the current weight)."""
    s = fit.site
    moved = np.moveaxis(np.asarray(like), s.out_axis, 0)
    w = fit.weight.reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(w, 0, s.out_axis)).astype(np.asarray(like).dtype)


def refit_record(fit: Fit, old: np.ndarray, new: np.ndarray) -> dict:
    """What the refit did to one layer: its output residual (relative to ‖Y‖²) before and after,
    and the relative change ‖W' − W‖/‖W‖ of its (pruned) weight."""
    old = np.asarray(old, dtype=np.float64)
    change = np.linalg.norm(np.asarray(new, dtype=np.float64) - old) / max(np.linalg.norm(old), 1e-30)
    return {"layer": fit.site.node, "kind": "refit",
            "residual_before": round(float(fit.residual_before), 6),
            "residual_after": round(float(fit.residual_after), 6),
            "weight_change": round(float(change), 6)}
