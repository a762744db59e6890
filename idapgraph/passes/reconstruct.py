"""Training-free healing by least-squares layer reconstruction.

A layer that lost input channels (the output projection after pruned heads, the down projection
after pruned MLP units, the conv after a pruned conv) is refitted on calibration data so that,
fed the pruned model's activations ``X̃`` (kept channels only), it reproduces the original
model's output ``Y`` as closely as possible:

    [W', c] = argmin ‖ [X̃, 1] · [W', c]ᵀ − Y ‖² + λ‖W'‖²

(``X̃`` as im2col patches for a conv; ``λ`` a small ridge relative to the Gram matrix's mean
diagonal, for channels that are nearly collinear on the calibration set). The intercept ``c``
goes into the layer's bias, so the pruned channels' mean contribution is restored as with bias
compensation, and what they carried that the kept channels can express is restored too. This
is the "mask tuning" step of training-free transformer pruning (Kwon et al., 2022), done here
for any linear layer or convolution on both backends. A fit is applied only where it lowers the
layer's own calibration residual.

The pass runs no model: :class:`Targets` collects the original outputs, :class:`Normal`
accumulates the normal equations from the pruned model's inputs, :func:`solve` fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import PARAM, Graph
from ..ir.ops import weight_axes, weighted_nodes
from ..ir.plan import Rewrite

RIDGE = 1e-4


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


def sites(graph: Graph, rewrite: Rewrite) -> list[Site]:
    """Ungrouped linear layers and 2-D convolutions whose input channels were removed, in
    topological order."""
    out = []
    for node in weighted_nodes(graph):
        x, w = node.inputs[0], node.inputs[1]
        if w is None or graph.tensors[w].rank is None or graph.tensors[w].rank < 2:
            continue
        out_axis, in_axis = weight_axes(node)
        ch = 1 if node.op == "conv" else (graph.tensors[x].rank or 0) - 1
        if rewrite.kept(x, ch) is None:
            continue
        conv = None
        if node.op == "conv":
            if int(node.attrs.get("groups", 1)) != 1 or graph.tensors[w].rank != 4 or \
                    "pads" not in node.attrs:
                continue
            conv = {k: list(node.attrs[k]) for k in ("stride", "pads", "dilation")}
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        y = node.outputs[0]
        kept = rewrite.kept(y, 1 if node.op == "conv" else (graph.tensors[y].rank or 0) - 1)
        out.append(Site(node.name, x, y, w, bias, conv, out_axis, in_axis, kept))
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


def _rows(a: np.ndarray, site: Site, kernel: tuple | None = None) -> np.ndarray:
    """Activations as a (samples, features) float32 matrix: a linear layer's input/output
    flattened over leading axes; a conv's input as im2col patches (``kernel``), its output per
    pixel."""
    a = np.asarray(a, dtype=np.float32)
    if site.conv is None:
        return a.reshape(-1, a.shape[-1])
    if kernel is None:  # conv output (N, C, H, W) -> (N*H*W, C)
        return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])
    p, (sh, sw), (dh, dw) = site.conv["pads"], site.conv["stride"], site.conv["dilation"]
    a = np.pad(a, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    kh, kw = kernel
    win = np.lib.stride_tricks.sliding_window_view(a, ((kh - 1) * dh + 1, (kw - 1) * dw + 1),
                                                   axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c, ho, wo = win.shape[:4]  # rows (n, y, x), features (c, ky, kx) as im2col orders them
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


class Targets:
    """Reducer over the original model: every batch's outputs ``Y`` of the sites, in order."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.batches: list[dict[str, np.ndarray]] = []

    @property
    def tensors(self) -> list[str]:
        return sorted({s.y for s in self.sites})

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        self.batches.append({t: np.asarray(values[t], dtype=np.float32) for t in self.tensors
                             if t in values})


class Normal:
    """Reducer over the pruned model: normal equations ``[X̃,1]ᵀ[X̃,1]``, ``[X̃,1]ᵀY`` and
    ``ΣY²`` per site, pairing each batch with the original's outputs of the same batch."""

    def __init__(self, sites: list[Site], targets: Targets, kernels: dict[str, tuple],
                 tmatmul=None) -> None:
        self.sites, self.targets, self.kernels = sites, targets, kernels
        self.tmatmul = tmatmul or _tmatmul  # aᵀb (a backend's may be faster: Model.tmatmul)
        self.i = 0
        self.gram: dict[str, np.ndarray] = {}
        self.cross: dict[str, np.ndarray] = {}
        self.yy: dict[str, float] = {}

    @property
    def tensors(self) -> list[str]:
        return sorted({s.x for s in self.sites})

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        ref = self.targets.batches[self.i]
        self.i += 1
        for s in self.sites:
            if s.x not in values or s.y not in ref:
                continue
            x = _rows(values[s.x], s, self.kernels.get(s.node))
            y = _rows(ref[s.y], s)
            if s.out_kept is not None:
                y = y[:, s.out_kept]
            if x.shape[0] != y.shape[0]:
                continue
            d = x.shape[1]
            g = self.gram.setdefault(s.node, np.zeros((d + 1, d + 1)))
            c = self.cross.setdefault(s.node, np.zeros((d + 1, y.shape[1])))
            _add_augmented(g, c, x, y, self.tmatmul)
            self.yy[s.node] = self.yy.get(s.node, 0.0) + float(np.square(y).sum(dtype=np.float64))


def _tmatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.T @ b


def _add_augmented(gram: np.ndarray, cross: np.ndarray, x: np.ndarray, y: np.ndarray,
                   tmatmul=_tmatmul) -> None:
    """Add one batch's ``[x, 1]ᵀ[x, 1]`` to ``gram`` and ``[x, 1]ᵀ y`` to ``cross`` (float64
    accumulators, in place): the products in float32 BLAS (a batch's sums are short), the
    batches summed in float64."""
    d = x.shape[1]
    gram[:d, :d] += tmatmul(x, x)
    s = x.sum(axis=0, dtype=np.float64)
    gram[:d, d] += s
    gram[d, :d] += s
    gram[d, d] += x.shape[0]
    cross[:d] += tmatmul(x, y)
    cross[d] += y.sum(axis=0, dtype=np.float64)


@dataclass
class Fit:
    site: Site
    weight: np.ndarray  # (out, features) in the layer's feature order
    intercept: np.ndarray  # (out,)
    residual_before: float  # relative to ‖Y‖², with the current weights
    residual_after: float


def solve(site: Site, normal: Normal, current_w: np.ndarray, current_b: np.ndarray | None,
          has_intercept: bool) -> Fit | None:
    """Fit one site from its normal equations; ``current_w`` in the backend's layout."""
    g, c, yy = normal.gram.get(site.node), normal.cross.get(site.node), normal.yy.get(site.node)
    if g is None or not yy:
        return None
    w = np.asarray(current_w, dtype=np.float64)
    w2 = np.moveaxis(w, site.out_axis, 0).reshape(w.shape[site.out_axis], -1)  # (out, feat)
    d = w2.shape[1]
    if g.shape[0] != d + 1:
        return None
    b0 = np.zeros(w2.shape[0]) if current_b is None else np.asarray(current_b, dtype=np.float64)

    def residual(theta):  # ‖X1 θ − Y‖² from the normal equations
        return float(np.sum(theta * (g @ theta)) - 2 * np.sum(theta * c) + yy)

    before = residual(np.concatenate([w2.T, b0[None]], axis=0))
    lam = RIDGE * float(np.mean(np.diag(g)[:d]))
    reg = g + lam * np.diag(np.r_[np.ones(d), 0.0])
    if not has_intercept:
        reg, rhs = reg[:d, :d], c[:d]
    else:
        rhs = c
    try:
        theta = np.linalg.solve(reg, rhs)
    except np.linalg.LinAlgError:
        return None
    if not has_intercept:
        theta = np.concatenate([theta, b0[None]], axis=0)
    after = residual(theta)
    return Fit(site, theta[:d].T, theta[d], before / yy, after / yy)


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
