"""Latency model of a pruning plan, from measured look-up tables (the MDP recipe).

* **Options.** Every channel group may keep one of a few unit counts (:func:`group_options`):
  multiples of a kernel-friendly quantum of channels (8 by default, coarser for wide groups) from
  the per-group minimum up to all of them; a narrow group also halvings of its smallest
  count, down to 4 channels.
* **Look-up tables.** Every conv and linear layer is timed in onnxruntime (convs in context,
  see :mod:`idapgraph.runners.op_timer`) at each (input, output) channel count its producer's and its
  own group can reach, so a layer's latency follows the pruning of *both* sides. Entries are
  keyed by the layer's signature (op, geometry, spatial size, batch, dtype) and cached on disk
  per machine, thread count and execution provider (:class:`LatencyTable`), so models sharing
  layers share entries (ResNet-101 reuses ResNet-50's).
* **Everything else** (norms, activations, adds, pooling; what onnxruntime fuses away or runs as
  cheap memory passes) is charged per output element, with one coefficient fitted so the model
  reproduces the measured latency of the unpruned model (:meth:`LatencyModel.calibrate`).
* **Blocks.** A bypassable block with prunable channels of its own gets a gate: bypassed, its
  nodes cost nothing and its own channel groups count for nothing (:mod:`.latency_select`).

A plan's predicted latency is the sum of its terms; :mod:`.latency_select` maximises the kept
importance under a latency budget with a MILP over these options and gates.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import ACTIVATION, PARAM, Graph
from ..ir.ops import Space
from .select import min_kept

FREE_OPS = {"meta", "reshape"}  # no data moved (onnxruntime aliases reshapes)
MAX_OPTIONS = 10
MIN_OPTIONS = 4


# ---------------------------------------------------------------------------------------------
# the table (in memory; read from and saved to disk by idapgraph.runners.latency_cache)
# ---------------------------------------------------------------------------------------------

def sig_key(sig: dict) -> str:
    return json.dumps(sig, sort_keys=True, separators=(",", ":"))


class LatencyTable:
    """Measured layer latencies (ms) for one machine (a dict naming what the timings depend on:
    :func:`idapgraph.runners.op_timer.machine`): signature -> "cin,cout" -> ms."""

    def __init__(self, machine_info: dict) -> None:
        self.machine = machine_info
        self.entries: dict[str, dict[str, float]] = {}
        self.new = 0
        # signatures the timer could not time in this process -> why (not saved: retried in
        # the next one); their layers are priced per output element
        self.failed: dict[str, str] = {}

    def get(self, sig: dict, cin: int, cout: int) -> float | None:
        return self.entries.get(sig_key(sig), {}).get(f"{cin},{cout}")

    def put(self, sig: dict, cin: int, cout: int, ms: float) -> None:
        self.entries.setdefault(sig_key(sig), {})[f"{cin},{cout}"] = float(ms)
        self.new += 1

    def merge(self, entries: dict[str, dict[str, float]]) -> None:
        """Add ``entries`` (this table's form), keeping what it has where both time a layer."""
        for k, v in entries.items():
            self.entries.setdefault(k, {}).update({c: ms for c, ms in v.items()
                                                   if c not in self.entries.get(k, {})})

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def __bool__(self) -> bool:  # a table is there even while empty (``table or default``)
        return True


# ---------------------------------------------------------------------------------------------
# options and layer signatures
# ---------------------------------------------------------------------------------------------

def group_options(n_units: int, width: int, *, min_keep: float = 0.1, quantum: int = 8,
                  finest: int = 4, max_options: int = MAX_OPTIONS) -> list[int]:
    """Unit counts a group of ``n_units`` (``width`` channels each) may keep, from the per-group
    minimum up to ``n_units`` (unpruned): counts whose channels are a multiple of 32, else 16,
    else ``quantum`` -- the coarsest that still offers ``max_options`` counts -- thinned evenly
    to ``max_options``. A group with fewer than ``MIN_OPTIONS`` counts also gets halvings of its
    smallest, down to ``finest`` channels (none when ``finest >= quantum``). A group narrower
    than ``quantum`` may keep any count."""
    lo = min_kept(n_units, min_keep)
    cands: list[int] = []
    for q in sorted({q for q in (32, 16, quantum) if q >= quantum}, reverse=True):
        step = max(1, -(-q // max(width, 1)))
        cands = list(range(step * max(1, -(-lo // step)), n_units, step))
        if len(cands) + 1 >= max_options:
            break
    if not cands:
        cands = list(range(lo, n_units))
    # a narrow group (fewer than MIN_OPTIONS counts) also gets halvings of its smallest count,
    # down to ``finest`` channels: the tables say whether they are fast
    floor = max(lo, -(-finest // max(width, 1)))
    while cands and len(cands) + 1 < MIN_OPTIONS and cands[0] // 2 >= floor:
        cands.insert(0, cands[0] // 2)
    opts = cands + [n_units]
    if len(opts) > max_options:
        idx = np.unique(np.round(np.linspace(0, len(opts) - 1, max_options)).astype(int))
        opts = [opts[i] for i in idx]
    return opts


def _dims(shape, batch: int) -> list[int] | None:
    if shape is None:
        return None
    return [batch if d is None else int(d) for d in shape]


def layer_signature(graph: Graph, node, batch: int = 1) -> tuple[dict, Space, Space] | None:
    """``(signature, input-channel space, output-channel space)`` of a conv/linear layer that
    can be timed alone, else None (also for a node without inputs or outputs: an fx
    ``get_attr`` or a constant)."""
    if not node.inputs or not node.outputs:
        return None
    x, w = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    y = node.outputs[0]
    if x is None or w is None:
        return None
    xs, ws, ys = _dims(graph.shape(x), batch), graph.shape(w), graph.shape(y)
    dtype = graph.tensors[x].dtype
    if xs is None or ws is None or ys is None or any(d is None for d in ws) or \
            dtype not in ("float32", "float16"):
        return None
    bias = len(node.inputs) > 2 and node.inputs[2] is not None
    if node.op == "conv" and "stride" in node.attrs and len(xs) == len(ws) >= 3:
        groups = int(node.attrs.get("groups", 1))
        return ({"op": "conv", "spatial": xs[2:], "kernel": list(ws[2:]),
                 "stride": list(node.attrs["stride"]), "pads": list(node.attrs["pads"]),
                 "dilation": list(node.attrs["dilation"]),
                 "group_in": None if groups == 1 else xs[1] // groups, "bias": bias,
                 "batch": xs[0], "dtype": dtype}, Space(x, 1), Space(y, 1))
    if node.op == "linear" and len(xs) >= 2:
        return ({"op": "linear", "rows": int(np.prod(xs[:-1])), "bias": bias, "dtype": dtype},
                Space(x, len(xs) - 1), Space(y, len(ys) - 1))
    return None


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

@dataclass
class Term:
    """Latency of some nodes as a table over the options of up to two groups (``a`` rows, ``b``
    columns; None: that side does not change), paid only while every block in ``gates`` stays."""

    kind: str  # "lut" (ms) or "elems" (output elements; priced by LatencyModel.elem_ms)
    a: int | None
    b: int | None
    table: np.ndarray
    gates: tuple[int, ...] = ()
    nodes: list[str] = field(default_factory=list)


@dataclass
class LatencyModel:
    options: list[list[int]]  # per group: the unit counts it may keep (last: all)
    terms: list[Term]
    blocks: list  # gated blocks (passes.blocks.Block)
    internal: dict[int, tuple[int, ...]]  # group -> gated blocks that hold all of it
    lut_scale: float = 1.0
    elem_ms: float = 0.0
    points: list = field(default_factory=list)  # (table ms, elements, measured ms) per model
    # importance a gated block keeps while it stays, on the units' scale (measured: see
    # idapgraph.latency_target.block_weights); None: a bypass costs its own groups' units
    block_weight: list[float] | None = None
    # each gated block's calibration error bypassed alone, and a bound on the sum over bypassed
    # blocks (None: no bound); see idapgraph.latency_target.select
    block_error: list[float] | None = None
    error_cap: float | None = None
    timed: int = 0  # table entries timed while building (the rest came from the cache)
    needed: int = 0  # table entries the model reads
    # entries of layers the timer could not time (failed signatures): not read, not counted in
    # ``needed`` or ``timed``; those layers are priced per output element
    untimed: int = 0
    untimed_layers: list[str] = field(default_factory=list)

    def cost(self, t: Term) -> np.ndarray:
        return t.table * (self.lut_scale if t.kind == "lut" else self.elem_ms)

    def full_choice(self) -> list[int]:
        return [len(o) - 1 for o in self.options]

    def raw(self, choice: list[int], kept_blocks=None) -> tuple[float, float]:
        """(summed table ms, summed elements) of a choice (option index per group)."""
        kept = set(range(len(self.blocks))) if kept_blocks is None else set(kept_blocks)
        ms = elems = 0.0
        for t in self.terms:
            if not kept.issuperset(t.gates):
                continue
            v = float(t.table[0 if t.a is None else choice[t.a], 0 if t.b is None else choice[t.b]])
            if t.kind == "lut":
                ms += v
            else:
                elems += v
        return ms, elems

    def predict(self, choice: list[int], kept_blocks=None) -> float:
        ms, elems = self.raw(choice, kept_blocks)
        return self.lut_scale * ms + self.elem_ms * elems

    def calibrate(self, measured_ms: float) -> None:
        """Fit the model to the measured unpruned latency: the tables are scaled to it (layers
        run slower inside a model than alone, their weights and inputs no longer in cache);
        :meth:`refit` later splits the time between tables and elements."""
        ms, elems = self.raw(self.full_choice())
        self.points = [(ms, elems, measured_ms)]
        if ms:
            self.lut_scale, self.elem_ms = measured_ms / ms, 0.0
        else:
            self.lut_scale, self.elem_ms = 1.0, (measured_ms / elems if elems else 0.0)

    def refit(self, choice: list[int], kept_blocks, measured_ms: float) -> None:
        """Add a measured candidate and refit (non-negative least squares, relative errors)
        ``latency = lut_scale·Σ tables + elem_ms·Σ elements`` to every measurement so far."""
        from scipy.optimize import nnls

        self.points.append((*self.raw(choice, kept_blocks), measured_ms))
        pts = np.array(self.points, dtype=float)
        A = pts[:, :2] / pts[:, 2:3]
        if np.linalg.matrix_rank(A) < 2:
            return
        coef, _ = nnls(A, np.ones(len(pts)))
        if coef[0] > 0:
            self.lut_scale, self.elem_ms = float(coef[0]), float(coef[1])

    def counts(self, choice: list[int]) -> list[int]:
        return [self.options[g][j] for g, j in enumerate(choice)]


def _class_drivers(coupling: Coupling) -> dict[int, tuple[int, int] | None]:
    """Space class -> (group, indices per unit) when exactly one group removes from it; None when
    several do (a concatenation's output: modelled at full size)."""
    cover: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for gi, g in enumerate(coupling.groups):
        for m in g.members:
            cover[coupling.space_class[m.spaces[0]]][gi] += int(m.index.shape[1])
    return {c: (next(iter(v.items())) if len(v) == 1 else None) for c, v in cover.items()}


def _group_width(coupling: Coupling, g) -> int:
    return int(g.members[0].index.shape[1])


def _internal(graph: Graph, coupling: Coupling, blocks) -> dict[int, tuple[int, ...]]:
    """Groups whose every tensor lives inside a block (made or read only by its nodes)."""
    out = {}
    inside_sets = [set(b.nodes) for b in blocks]
    for gi, g in enumerate(coupling.groups):
        tensors = {s.tensor for m in g.members for s in m.spaces}
        holders = []
        for bi, inside in enumerate(inside_sets):
            if all((graph.tensors[t].kind == PARAM and set(graph.tensors[t].consumers) <= inside)
                   or (graph.tensors[t].producer in inside) for t in tensors):
                holders.append(bi)
        if holders:
            out[gi] = tuple(holders)
    return out


def build(graph: Graph, coupling: Coupling, blocks, table: LatencyTable, *,
          batch: int = 1, min_keep: float = 0.1, quantum: int = 8, finest: int = 4,
          timer: Callable[[dict, int, int], float],
          progress: Callable[[int, int], None] | None = None,
          refresh: bool = False, gate_groupless: bool = False) -> LatencyModel:
    """The latency model of ``graph`` under ``coupling``'s groups and the gated ``blocks``,
    timing (``timer(sig, cin, cout) -> ms``) every table entry not cached yet (``refresh``:
    every entry the model needs). ``gate_groupless``: also gate blocks without channel groups
    of their own (for a caller that prices blocks by weights: ``LatencyModel.block_weight``)."""
    options = [group_options(g.n_units, _group_width(coupling, g), min_keep=min_keep,
                             quantum=quantum, finest=finest) for g in coupling.groups]
    blocks, internal, blocks_of = _gated_blocks(graph, coupling, blocks, gate_groupless)
    sides = _Sides(graph, coupling, _class_drivers(coupling), options, batch)
    specs, needed, pending = _layer_specs(graph, sides, table, refresh)
    pending = list(dict.fromkeys((sig_key(s), ci, co) for s, ci, co in pending))
    timed_by = _time_entries(pending, table, timer, progress)
    failed = {sk for sk, _, _ in needed if sk in table.failed}  # untimeable: priced per element
    untimed = [n for n in needed if n[0] in failed]
    untimed_layers = [sp[1] for sp in specs if sp[0] == "lut" and sig_key(sp[6]) in failed]
    terms = _merged_terms(specs, failed, options, blocks_of, table)
    return LatencyModel(options=options, terms=terms, blocks=list(blocks),
                        internal=internal,
                        timed=sum(n for sk, n in timed_by.items() if sk not in failed),
                        needed=len(needed) - len(untimed), untimed=len(untimed),
                        untimed_layers=untimed_layers)


def _gated_blocks(graph: Graph, coupling: Coupling, blocks, gate_groupless: bool):
    """The blocks that get a gate, (group -> gated blocks holding all of it) and (node -> gated
    blocks it lies in), indices into the gated blocks. Unweighted, only a block with channel
    groups of its own is gated: bypassing it costs their importance (a block without any would
    cost nothing and always go)."""
    internal = _internal(graph, coupling, blocks)
    held = list(range(len(blocks))) if gate_groupless else sorted(
        {bi for v in internal.values() for bi in v})
    blocks = [blocks[bi] for bi in held]
    internal = {g: tuple(held.index(bi) for bi in v) for g, v in internal.items()}
    blocks_of: dict[str, tuple[int, ...]] = defaultdict(tuple)
    for bi, b in enumerate(blocks):
        for n in b.nodes:
            blocks_of[n] += (bi,)
    return blocks, internal, blocks_of


@dataclass
class _Sides:
    """How the channel counts of tensor axes follow the groups' options."""

    graph: Graph
    coupling: Coupling
    drivers: dict[int, tuple[int, int] | None]  # see _class_drivers
    options: list[list[int]]
    batch: int

    def side(self, space: Space | None) -> tuple[int | None, Callable[[int], int], int]:
        """(group, channels at option j, full channels) of one tensor axis."""
        full = _dims(self.graph.shape(space.tensor), self.batch)[space.axis]
        d = self.drivers.get(self.coupling.space_class.get(space)) if space is not None else None
        if d is None:
            return None, lambda j: full, full
        gi, k = d
        n, opts = self.coupling.groups[gi].n_units, self.options[gi]
        return gi, (lambda j: full - (n - opts[j]) * k), full

    def elems_spec(self, node) -> tuple | None:
        """A node priced per output element, along the first axis a group prunes."""
        out = node.outputs[0]
        shape = _dims(self.graph.shape(out), self.batch)
        if shape is None:
            return None
        axis = next((ax for ax in range(len(shape))
                     if self.drivers.get(self.coupling.space_class.get(Space(out, ax)))), None)
        if axis is None:
            return ("elems", node.name, None, None, None, None, float(np.prod(shape)))
        a, fa, full = self.side(Space(out, axis))
        return ("elems", node.name, a, None, fa, float(np.prod(shape)) / max(full, 1), None)


def _layer_specs(graph: Graph, sides: _Sides, table: LatencyTable, refresh: bool):
    """Per priced node a spec: ``("lut", node, a, b, fa, fb, sig, fallback)`` (a timed layer;
    ``b == "same"``: both sides are one group; ``fallback``: its elems spec) or ``("elems",
    node, a, None, fa, per-channel, n)``; plus the table entries the specs read (signature key,
    cin, cout) and those to time (signature, cin, cout; ``refresh``: all)."""
    options = sides.options
    pending: list[tuple[dict, int, int]] = []
    needed: set[tuple[str, int, int]] = set()
    specs: list[tuple] = []
    for node in graph:
        if node.op in FREE_OPS or not node.outputs or \
                graph.tensors[node.outputs[0]].kind != ACTIVATION:
            continue
        ls = layer_signature(graph, node, sides.batch)
        if ls is None:
            spec = sides.elems_spec(node)
            if spec is not None:
                specs.append(spec)
            continue
        sig, sin, sout = ls
        a, fa, _ = sides.side(sin)
        b, fb, _ = sides.side(sout)
        if a is not None and a == b:  # depthwise / grouped: both sides are one group
            b = "same"
        specs.append(("lut", node.name, a, b, fa, fb, sig, sides.elems_spec(node)))
        for i in range(len(options[a]) if a is not None else 1):
            for j in ([i] if b == "same" else range(len(options[b]) if b is not None else 1)):
                cin, cout = fa(i), fb(j)
                if cin > 0 and cout > 0:
                    needed.add((sig_key(sig), cin, cout))
                    if refresh or table.get(sig, cin, cout) is None:
                        pending.append((sig, cin, cout))
    return specs, needed, pending


def _merged_terms(specs: list[tuple], failed: set[str], options: list[list[int]],
                  blocks_of: dict[str, tuple[int, ...]], table: LatencyTable) -> list[Term]:
    """The specs' tables (a layer of a ``failed`` signature priced by its elems fallback), summed
    into one term per (kind, groups, gates)."""
    merged: dict[tuple, Term] = {}
    for spec in specs:
        if spec[0] == "lut" and sig_key(spec[6]) in failed:
            spec = spec[7]
            if spec is None:
                continue
        kind, name, a, b, fa, fb, extra = spec[:7]
        gates = blocks_of.get(name, ())
        tab, b = _spec_table(kind, a, b, fa, fb, extra, options, table)
        key = (kind, a, b, gates)
        if key in merged:
            merged[key].table = merged[key].table + tab
            merged[key].nodes.append(name)
        else:
            merged[key] = Term(kind, a, b, tab, gates, [name])
    return list(merged.values())


def _spec_table(kind: str, a, b, fa, fb, extra, options: list[list[int]],
                table: LatencyTable) -> tuple[np.ndarray, int | None]:
    """One spec's table over the options of its groups, and its column group (None for
    ``"same"``: the rows carry both sides)."""
    na = len(options[a]) if a is not None else 1
    if kind == "lut":
        same = b == "same"
        nb = 1 if same or b is None else len(options[b])
        tab = np.zeros((na, nb))
        for i in range(na):
            for j in range(nb):
                cin, cout = fa(i), fb(i if same else j)
                tab[i, j] = table.get(extra, cin, cout) if cin > 0 and cout > 0 else 0.0
        return tab, None if same else b
    if a is None:
        return np.full((1, 1), extra), b
    return np.array([[fa(i) * fb] for i in range(na)], dtype=float), b


def _time_entries(pending: list[tuple[str, int, int]], table: LatencyTable, timer,
                  progress=None) -> dict[str, int]:
    """Time the table entries ``pending`` ((signature key, cin, cout)) into ``table``; how many
    of each signature were timed. A signature whose timer raises or returns no finite,
    non-negative number of milliseconds goes to ``table.failed`` and is not timed again."""
    timed: dict[str, int] = defaultdict(int)
    for done, (sk, ci, co) in enumerate(pending, 1):
        if sk not in table.failed:
            try:  # e.g. an op the provider lacks for a dtype
                ms = timer(json.loads(sk), ci, co)
                if isinstance(ms, bool) or not isinstance(ms, (int, float, np.number)) \
                        or not math.isfinite(ms) or ms < 0:
                    raise ValueError(f"the timer returned {ms!r}, not milliseconds")
            except Exception as e:  # noqa: BLE001 - any failure leaves the layer untimed
                text = str(e).strip()
                table.failed[sk] = f"{type(e).__name__}: {text.splitlines()[0][:200]}" \
                    if text else type(e).__name__
            else:
                table.put(json.loads(sk), ci, co, float(ms))
                timed[sk] += 1
        if progress is not None:
            progress(done, len(pending))
    return timed


def untimed_note(table: LatencyTable) -> str | None:
    """One line on the layer signatures ``table``'s timer could not time, or None."""
    if not table.failed:
        return None
    ops = sorted({str(json.loads(sk).get("op", "?")) for sk in table.failed})
    first = next(iter(table.failed.values()))
    return (f"latency tables: {len(table.failed)} layer signature(s) ({', '.join(ops)}) could "
            f"not be timed ({first}); those layers are untimed, priced per output element "
            "instead of measured")


# How concave a group's importance is in the share of its score it keeps (see kept_importance)
CONCAVITY = 0.5


def kept_importance(s, counts, concavity: float = CONCAVITY) -> np.ndarray:
    """Importance of a group with unit scores ``s`` keeping each of ``counts`` highest-scoring
    units: ``n·(S_k/S_n)^concavity``, with ``S_k`` the summed score of the ``k`` kept and ``n``
    the group's units (all scores zero: the share of units kept).

    With ``concavity=1`` (and mean-normalised scores) this is the summed score of the kept
    units: every unit weighs about the same wherever it is, so a knapsack over latency empties
    the groups whose units cost the most milliseconds -- the narrow, high-resolution ones,
    where a network can least afford it. Concave, the first units a group loses cost less than
    its last: cuts are spread, and a group is cut deep only where its time is worth it. On the
    trained MNIST CNN (least-squares healing, latency 0.6 / 0.4 / 0.3, one sweep on one
    table) the summed score gave 89.1 / 89.4 / 88.7 % top-1, ``0.5`` 96.9 / 94.7 / 92.9 %; the
    plans move with timing noise, so single runs of either can land elsewhere (BENCHMARKS.md,
    "Latency against accuracy")."""
    s = np.asarray(s, dtype=float)
    counts = np.asarray(counts, dtype=int)
    top = np.concatenate([[0.0], np.cumsum(np.sort(s)[::-1])])
    share = top[counts] / top[-1] if top[-1] > 0 else counts / max(len(s), 1)
    return len(s) * np.clip(share, 0.0, 1.0) ** concavity


def measured_importance(s, counts, losses, concavity: float = CONCAVITY) -> np.ndarray:
    """Importance of a group keeping each of ``counts`` highest-scoring units, on the scale of
    a measured loss (:func:`measured_loss`): the loss avoided against the ``counts``' worst
    (non-negative)."""
    loss = measured_loss(s, counts, losses, concavity)
    return loss.max() - loss


def measured_loss(s, counts, losses, concavity: float = CONCAVITY) -> np.ndarray:
    """The loss of a group keeping each of ``counts`` highest-scoring units: ``losses`` maps
    kept counts to the calibration output error of keeping only that many (the rest removed
    and healed, the other groups whole). Piecewise linear in the unmeasured loss
    ``1 − kept_importance / n`` (so the unit scores still shape it between measurements), zero
    when every unit is kept, never falling as units go (a measured dip is noise), and continued
    past the last measurement with the last segment's slope."""
    s = np.asarray(s, dtype=float)
    n = len(s)
    shape = lambda k: 1.0 - kept_importance(s, k, concavity) / max(n, 1)  # noqa: E731
    ks = sorted((int(k) for k in losses if 0 <= int(k) < n), reverse=True)
    u = np.concatenate([[0.0], shape(ks)]) if ks else np.zeros(1)
    e = np.maximum.accumulate(np.concatenate([[0.0], [float(losses[k]) for k in ks]]))
    x = shape(np.asarray(counts, dtype=int))
    loss = np.interp(x, u, e)
    if len(u) > 1 and u[-1] > u[-2]:
        slope = (e[-1] - e[-2]) / (u[-1] - u[-2])
        loss = np.where(x > u[-1], e[-1] + slope * (x - u[-1]), loss)
    return loss


def importance(scores: list[np.ndarray], options: list[list[int]],
               concavity: float = CONCAVITY, losses: list[dict] | None = None) -> list[np.ndarray]:
    """Per group and option: the importance of keeping that many units -- with ``losses`` (per
    group: kept count -> measured output error) :func:`measured_importance`, one scale across
    groups; without, :func:`kept_importance`, each group on the scale of its unit count."""
    if losses is not None:
        return [measured_importance(s, opts, ls, concavity)
                for s, opts, ls in zip(scores, options, losses)]
    return [kept_importance(s, opts, concavity) for s, opts in zip(scores, options)]


