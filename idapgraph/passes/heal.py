"""Training-free healing by per-channel statistics matching (DESIGN.md §1, stage 3).

After pruning, every kept output channel ``c`` of a conv/linear layer gets an affine correction
``y'_c = a_c · y_c + b_c`` with ``a_c = σ_orig / σ_pruned`` and ``b_c = μ_orig − a_c · μ_pruned``
(calibration statistics of the original and the pruned model), folded into the layer's weight
row and bias. For a layer followed by BatchNorm this is BatchNorm re-estimation; for ONNX
exports, where the exporter folded BatchNorm into the conv, it is the same healer. Corrections
are applied in topological order, a chunk of layers per calibration pass. Channels whose
variance is near zero in either model are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir.graph import PARAM, Graph
from ..ir.ops import channel_axis, weight_axes, weighted_nodes
from ..ir.plan import Rewrite
from .stats import ChannelStats

EPS = 1e-6


@dataclass(frozen=True)
class Site:
    """A layer output to correct."""

    node: str
    tensor: str
    axis: int  # channel axis of ``tensor``
    weight: str
    out_axis: int
    bias: str | None
    kept: np.ndarray | None  # original indices of the kept channels (None: all)


def sites(graph: Graph, rewrite: Rewrite | None) -> list[Site]:
    """Conv/linear outputs in topological order (model outputs excluded: they stay exact)."""
    out = []
    for node in weighted_nodes(graph):
        y, w = node.outputs[0], node.inputs[1]
        if y in graph.outputs or w is None or graph.tensors[w].rank is None:
            continue
        ry = graph.tensors[y].rank
        if not ry or graph.tensors[w].rank < 2:
            continue
        axis = channel_axis(node, ry)
        out_axis = weight_axes(node)[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        kept = rewrite.kept(y, axis) if rewrite is not None else None
        out.append(Site(node.name, y, axis, w, out_axis, bias, kept))
    return out


@dataclass
class Correction:
    """Per-channel scale/shift of one site, and what applying it means for its parameters."""

    site: Site
    scale: np.ndarray
    shift: np.ndarray


def corrections(chunk: list[Site], ref: ChannelStats, cur: ChannelStats) -> list[Correction]:
    """Scale/shift per kept channel so the current statistics match the reference's."""
    out = []
    for s in chunk:
        a, b = ref.mean_std(s.tensor, s.axis), cur.mean_std(s.tensor, s.axis)
        if a is None or b is None:
            continue
        (m0, s0), (m1, s1) = a, b
        if s.kept is not None:
            m0, s0 = m0[s.kept], s0[s.kept]
        if m0.shape != m1.shape:
            continue
        ok = (s0 > EPS * (1 + np.abs(m0))) & (s1 > EPS * (1 + np.abs(m1)))
        scale = np.where(ok, s0 / np.where(ok, s1, 1), 1.0)
        shift = np.where(ok, m0 - scale * m1, 0.0)
        out.append(Correction(s, scale, shift))
    return out


@dataclass
class HealReport:
    method: str = "none"
    layers: int = 0
    scale_min: float = 1.0
    scale_max: float = 1.0
    error_before: float | None = None  # relative MSE of outputs vs the original, calibration data
    error_after: float | None = None
    kept: bool = False  # whether the healed model was kept (it must not be worse)
    notes: list[str] = field(default_factory=list)
    # one record per layer healing changed (see ``affine_record``, ``bias_record`` and
    # reconstruct.refit_record): {"layer", "kind", ...numbers}
    corrections: list[dict] = field(default_factory=list)
    bias_added: dict[str, int] = field(default_factory=dict)  # layer -> size of a bias it got
    # layer -> calibration rows per input feature of its least-squares fit (every layer fitted)
    rows_per_input: dict[str, float] = field(default_factory=dict)


def _num(x) -> float:
    return round(float(x), 6)


def affine_record(c: "Correction") -> dict:
    """What statistics matching did to one layer: the range of its per-channel scales and the
    largest shift (an identity correction is scale 1, shift 0)."""
    return {"layer": c.site.node, "kind": "affine", "channels": int(len(c.scale)),
            "scale_min": _num(c.scale.min()), "scale_max": _num(c.scale.max()),
            "shift_max": _num(np.abs(c.shift).max()) if len(c.shift) else 0.0}


def bias_record(node: str, shift: np.ndarray) -> dict:
    """What bias compensation did to one layer: the largest change of its bias."""
    return {"layer": node, "kind": "bias", "channels": int(len(shift)),
            "shift_max": _num(np.abs(shift).max()) if len(shift) else 0.0}


class OutputError:
    """Reducer-free accumulator of relative squared error between two lists of outputs."""

    def __init__(self) -> None:
        self.num = 0.0
        self.den = 0.0

    def add(self, ref: list[np.ndarray], got: list[np.ndarray]) -> None:
        for r, g in zip(ref, got):
            r, g = np.asarray(r), np.asarray(g)
            if r.shape != g.shape:  # a data-dependent size (boxes after NMS): nothing pairs up
                self.num += _squares(r) + _squares(g)
            else:
                self.num += _squares(r, g)
            self.den += _squares(r)

    @property
    def value(self) -> float:
        return self.num / self.den if self.den > 0 else 0.0


_CHUNK = 1 << 18


def _squares(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Σ(a − b)² (or Σa²) in float64, a cache-sized chunk at a time (a language model's logits
    are hundreds of MB: whole-array float64 copies made this the slowest part of healing)."""
    a = a.reshape(-1)
    b = None if b is None else b.reshape(-1)
    total = 0.0
    for i in range(0, a.size, _CHUNK):
        d = a[i:i + _CHUNK].astype(np.float64)
        if b is not None:
            d -= b[i:i + _CHUNK]
        total += float(np.dot(d, d))
    return total


def chunks(items: list[Site], n: int) -> list[list[Site]]:
    """Split sites (topological order) into at most ``n`` consecutive chunks."""
    if not items:
        return []
    size = -(-len(items) // max(1, n))
    return [items[i:i + size] for i in range(0, len(items), size)]


def affine_updates(corr: list[Correction], value, can_add_bias) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fold corrections into parameters: ``W[c] *= a_c``; ``bias[c] = a_c·bias[c] + b_c``.

    ``value(name)`` reads the current parameters; ``can_add_bias(node)`` says whether a layer
    without a bias can get one. Returns (updated parameters, new biases per node name)."""
    updates: dict[str, np.ndarray] = {}
    new_bias: dict[str, np.ndarray] = {}
    for c in corr:
        s = c.site
        w = np.array(value(s.weight), dtype=np.float64)
        shape = [1] * w.ndim
        shape[s.out_axis] = -1
        if w.shape[s.out_axis] != len(c.scale):
            continue
        dtype = np.asarray(value(s.weight)).dtype
        updates[s.weight] = (w * c.scale.reshape(shape)).astype(dtype)
        if s.bias is not None:
            b = np.array(value(s.bias), dtype=np.float64)
            updates[s.bias] = (c.scale * b + c.shift).astype(dtype)
        elif np.any(np.abs(c.shift) > 0) and can_add_bias(s.node):
            new_bias[s.node] = c.shift.astype(dtype)
    return updates, new_bias


@dataclass(frozen=True)
class CompSite:
    """A layer that lost input channels: their mean contribution moves into its bias."""

    node: str
    x: str  # input tensor (original indexing)
    axis: int  # channel axis of ``x``
    weight: str
    in_axis: int
    out_axis: int
    bias: str | None
    removed: np.ndarray  # removed input channels (original indices)
    out_kept: np.ndarray | None  # kept output channels (original indices; None: all)


def compensation_sites(graph: Graph, rewrite: Rewrite) -> list[CompSite]:
    out = []
    for node in weighted_nodes(graph):
        x, w = node.inputs[0], node.inputs[1]
        if int(node.attrs.get("groups", 1)) != 1 or w is None or graph.tensors[w].rank is None:
            continue
        rx = graph.tensors[x].rank
        if not rx or graph.tensors[w].rank < 2:
            continue
        axis = channel_axis(node, rx)
        removed = rewrite.removed.get(x, {}).get(axis)
        if removed is None or not len(removed):
            continue
        out_axis, in_axis = weight_axes(node)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        out.append(CompSite(node.name, x, axis, w, in_axis, out_axis, bias, np.asarray(removed),
                            rewrite.kept(w, out_axis)))
    return out


def bias_compensation(sites: list[CompSite], ref: ChannelStats, original, current,
                      can_add_bias) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                             list[dict]]:
    """FLAP-style: ``bias += W[:, removed] · mean(x[removed])`` (summed over kernel taps), so a
    removed channel that is constant on the calibration data changes nothing (exactly so for
    linear layers and 1×1 convs; padding makes k×k convs exact only away from borders).
    ``original(name)``: parameters before pruning; ``current(name)``: after. Returns (updated
    parameters, new biases per node name, one :func:`bias_record` per layer changed)."""
    updates: dict[str, np.ndarray] = {}
    new_bias: dict[str, np.ndarray] = {}
    records: list[dict] = []
    for s in sites:
        ms = ref.mean_std(s.x, s.axis)
        if ms is None:
            continue
        mean = ms[0][s.removed]
        w = np.asarray(original(s.weight), dtype=np.float64)
        w_rm = np.take(w, s.removed, axis=s.in_axis)
        shape = [1] * w.ndim
        shape[s.in_axis] = -1
        contrib = w_rm * mean.reshape(shape)
        other = tuple(a for a in range(w.ndim) if a != s.out_axis)
        comp = contrib.sum(axis=other)
        if s.out_kept is not None:
            comp = comp[s.out_kept]
        dtype = np.asarray(original(s.weight)).dtype
        if s.bias is not None:
            updates[s.bias] = (np.asarray(current(s.bias), dtype=np.float64) + comp).astype(dtype)
        elif np.any(comp != 0) and can_add_bias(s.node):
            new_bias[s.node] = comp.astype(dtype)
        else:
            continue
        records.append(bias_record(s.node, comp))
    return updates, new_bias, records


def absorb_shifts(graph: Graph, new_bias: dict[str, np.ndarray], value
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Move a shift meant as a new bias of a bias-less layer into the running mean of the
    inference BatchNorm that alone reads the layer's output: ``BN(y + b)`` with mean ``μ`` is
    ``BN(y)`` with mean ``μ − b``, so healing adds no parameter (a conv without bias before a BN
    is how most CNNs are written). ``value(name)`` reads current parameters. Returns (updated
    running means, the new biases still needed)."""
    updates: dict[str, np.ndarray] = {}
    rest: dict[str, np.ndarray] = {}
    for node, shift in new_bias.items():
        mean = absorbing_mean(graph, node)
        if mean is None or mean in updates:
            rest[node] = shift
            continue
        old = np.asarray(value(mean))
        if old.shape != np.shape(shift):
            rest[node] = shift
            continue
        updates[mean] = (old.astype(np.float64) - shift).astype(old.dtype)
    return updates, rest


def absorbing_mean(graph: Graph, node: str) -> str | None:
    """The running mean of the inference BatchNorm that alone reads ``node``'s output (where a
    new bias of ``node`` can go instead: :func:`absorb_shifts`), else None."""
    y = graph.nodes[node].outputs[0]
    users = graph.tensors[y].consumers
    norm = graph.nodes[users[0]] if len(users) == 1 and y not in graph.outputs else None
    if norm is None or norm.op != "batchnorm" or len(norm.inputs) <= 3 or norm.inputs[0] != y:
        return None
    return norm.inputs[3]


class BiasRoom:
    """What a FLOPs/params target leaves for the biases healing gives bias-less layers
    (``None``: no limit on that count). A bias costs 2 FLOPs per output element (as
    :mod:`idapgraph.passes.cost` counts it) and a parameter per channel; one a BatchNorm absorbs
    costs nothing. DenseNet-121 at 0.5 FLOPs (its convs have no bias and feed concatenations)
    ended at 0.5008 with every refitted conv given a bias: the target missed."""

    def __init__(self, graph: Graph, shape, flops: float | None = None,
                 params: float | None = None) -> None:
        self.graph, self.shape, self.flops, self.params = graph, shape, flops, params
        self.denied: list[str] = []

    def _cost(self, node: str) -> tuple[int, int] | None:
        """(FLOPs, params) a new bias of ``node`` adds; None where a BatchNorm absorbs it (free)."""
        if absorbing_mean(self.graph, node) is not None:
            return None
        n = self.graph.nodes[node]
        dims = [1 if d is None else int(d) for d in self.shape(n.outputs[0])]
        channels = dims[1] if n.op == "conv" and len(dims) > 1 else dims[-1]
        return 2 * int(np.prod(dims, dtype=np.int64)), channels

    def _denied(self, node: str, cost: tuple[int, int] | None) -> bool:
        """Whether ``cost`` does not fit the room (``node`` then recorded in ``denied``)."""
        if cost is None or ((self.flops is None or cost[0] <= self.flops) and
                            (self.params is None or cost[1] <= self.params)):
            return False
        self.denied.append(node)
        return True

    def refuses(self, node: str) -> bool:
        """Whether there is no room for a new bias of ``node`` (nothing taken)."""
        return self._denied(node, self._cost(node))

    def take(self, node: str) -> bool:
        """Take the room for a new bias of ``node``; False where there is none."""
        cost = self._cost(node)
        if self._denied(node, cost):
            return False
        if cost is not None:
            self.flops = None if self.flops is None else self.flops - cost[0]
            self.params = None if self.params is None else self.params - cost[1]
        return True


@dataclass(frozen=True)
class NormSite:
    """An inference BatchNorm whose running statistics are stored parameters."""

    node: str
    x: str  # its input (channels on axis 1)
    mean: str
    var: str


def norm_sites(graph: Graph) -> list[NormSite]:
    """BatchNorms with stored running mean and variance, in topological order."""
    out = []
    for n in graph:
        if n.op != "batchnorm" or len(n.inputs) < 5 or None in n.inputs[3:5]:
            continue
        mean, var = n.inputs[3], n.inputs[4]
        if all(graph.tensors[t].kind == PARAM for t in (mean, var)) and \
                (graph.tensors[n.inputs[0]].rank or 0) >= 2:
            out.append(NormSite(n.name, n.inputs[0], mean, var))
    return out


def reestimated(site: NormSite, stats: ChannelStats, like_mean, like_var) -> dict | None:
    """BatchNorm re-estimation of one site: its running mean and (unbiased) variance set to its
    input's statistics on the calibration data (``stats`` holds them), in the dtypes of the
    current ``like_mean``/``like_var``; None when there is nothing to set."""
    ms = stats.mean_std(site.x, 1)
    if ms is None or np.shape(like_mean) != ms[0].shape:
        return None
    n = stats.n[(site.x, 1)]
    var = ms[1] ** 2 * (n / max(n - 1, 1))
    return {site.mean: ms[0].astype(np.asarray(like_mean).dtype),
            site.var: var.astype(np.asarray(like_var).dtype)}


def agreement(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float | None:
    """Share of calibration samples whose first output has the same argmax over its last axis
    in ``got`` as in ``ref`` (per batch, lists of outputs): the original's top-1 kept, for a
    classifier; None when the first output has no class axis to compare."""
    same = total = 0
    for r, o in zip(ref, got):
        if not r or not o:
            continue
        r0, o0 = np.asarray(r[0]), np.asarray(o[0])
        if r0.shape != o0.shape or r0.ndim < 2 or r0.shape[-1] < 2:
            return None
        same += int(np.sum(r0.argmax(-1) == o0.argmax(-1)))
        total += int(np.prod(r0.shape[:-1]))
    return same / total if total else None
