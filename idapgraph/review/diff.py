"""``diff``: what changed between two ONNX models, node by node.

Both files are read with the project's safe loader, normalised and turned into the IR like
``compress`` does, so FLOPs and parameter counts are the same numbers ``compress`` and
``analyze`` report (:func:`idapgraph.passes.cost.count`). Nodes are matched with
:mod:`idapgraph.review.match`; every node of A and every node added in B gets one record.

Weights whose shapes did not change are compared by value: a node whose weights changed without
changing shape (healing refits, rescales) is ``retuned``. When B was written by ``compress``, its
``idapgraph.healing`` metadata (see :meth:`idapgraph.backends.onnx_model.OnnxModel.stamp`) says
what healing did to each layer, and every record shows it.

The JSON form (``Diff.to_dict``) is versioned: ``{"schema": "idapgraph.diff", "version": 2}``;
docs/schemas.md documents every key.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ir.graph import PARAM, Graph, Node
from ..ir.ops import OPS, weight_axes
from ..passes import blocks as blocks_pass
from ..passes import cost as cost_pass
from .match import Matching, match

if TYPE_CHECKING:  # annotations only: the models are read by the ONNX frontend
    import onnx

SCHEMA = "idapgraph.diff"
VERSION = 2
STATUSES = ("same", "retuned", "changed", "removed", "bypassed", "added")
HEALING_KEY = "idapgraph.healing"


@dataclass
class Side:
    """One input model: the file as read, its IR and its cost."""

    path: str
    raw: onnx.ModelProto
    graph: Graph
    cost: cost_pass.Cost
    real_names: set[str]
    healing: dict[str, Any] | None = None  # the model's idapgraph.healing metadata, if any

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Side":
        from ..frontends import onnx as onnx_frontend  # onnx is imported when a model is read
        from ..frontends import onnx_file

        raw = onnx_file.load(path)
        graph = onnx_frontend.to_ir(onnx_frontend.normalize(raw))
        counts = Counter(n.name for n in raw.graph.node if n.name)
        return cls(os.fspath(path), raw, graph, cost_pass.count(graph),
                   {k for k, v in counts.items() if v == 1}, _healing(raw))

    @cached_property
    def _by_layer(self) -> dict[str, dict[str, Any]]:
        """Healing records by layer name, without the ``layer`` key."""
        return {rec.get("layer"): {k: v for k, v in rec.items() if k != "layer"}
                for rec in (self.healing or {}).get("corrections", []) if isinstance(rec, dict)}

    def healed(self, node: str) -> dict[str, Any] | None:
        """The healing record of one node (from the metadata), or ``None``."""
        return self._by_layer.get(node)

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "nodes": len(self.graph), "flops": self.cost.flops,
                "params": self.cost.params}


@dataclass
class NodeDiff:
    a: str | None  # node name in A (None: added in B)
    b: str | None  # node name in B (None: gone from B)
    op: str  # ONNX op type
    status: str  # one of STATUSES
    match: str | None  # rule that matched it (see review.match), None when unmatched
    block: str | None  # residual block key ("b6") when the node belongs to a bypassed block
    outputs_a: list | None
    outputs_b: list | None
    weights_a: list | None
    weights_b: list | None
    channels_a: int | None  # output channels of a conv/linear layer
    channels_b: int | None
    kept: float | None  # channels_b / channels_a, else kept fraction of the first output
    flops_a: int | None
    flops_b: int | None
    params_a: int | None
    params_b: int | None
    weights_change: float | None = None  # ‖W_B − W_A‖/‖W_A‖ over weights of equal shapes
    healing: dict[str, Any] | None = None  # what compress's healing did to this node (B's record)


@dataclass
class Diff:
    a: Side
    b: Side
    matching: Matching
    nodes: list[NodeDiff]
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        fa, fb = self.a.cost.flops, self.b.cost.flops
        pa, pb = self.a.cost.params, self.b.cost.params
        st = Counter(n.status for n in self.nodes)
        layers = [n for n in self.nodes if n.channels_a is not None]
        return {
            "flops_a": fa, "flops_b": fb, "flops_ratio": fb / fa if fa else 1.0,
            "params_a": pa, "params_b": pb, "params_ratio": pb / pa if pa else 1.0,
            "nodes": {s: st.get(s, 0) for s in STATUSES},
            "layers": len(layers),
            "layers_pruned": sum(1 for n in layers if n.channels_b is not None
                                 and n.channels_b < n.channels_a),
            "layers_healed": sum(1 for n in self.nodes if n.healing),
            "channels_a": sum(n.channels_a for n in layers),
            "channels_b": sum(n.channels_b or 0 for n in layers),
        }

    def healing_summary(self) -> dict[str, Any] | None:
        """B's healing metadata without the per-layer records (those are on the nodes)."""
        h = self.b.healing
        return None if h is None else {k: v for k, v in h.items() if k != "corrections"}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "a": self.a.summary(),
                "b": self.b.summary(), "totals": self.totals(),
                "match": self.matching.counts(), "blocks_bypassed": list(self.blocks),
                "healing": self.healing_summary(),
                "nodes": [asdict(n) for n in self.nodes]}


def _healing(raw: onnx.ModelProto) -> dict[str, Any] | None:
    """``compress``'s record of what healing did (``None`` for other tools' models, or when the
    entry is not the JSON object it should be: it is informational, never trusted further)."""
    for p in raw.metadata_props:
        if p.key == HEALING_KEY:
            try:
                data = json.loads(p.value)
            except ValueError:
                return None
            ok = isinstance(data, dict) and isinstance(data.get("corrections", []), list)
            return data if ok else None
    return None


def _shape(s) -> list | None:
    return None if s is None else [None if d is None else int(d) for d in s]


def _numel(s) -> int | None:
    if s is None or any(d is None for d in s):
        return None
    out = 1
    for d in s:
        out *= int(d)
    return out


def _weights(g: Graph, n: Node) -> list[str]:
    return [t for t in n.present_inputs() if g.tensors[t].kind == PARAM and g.tensors[t].trainable]


def _channels(g: Graph, n: Node) -> int | None:
    if not OPS[n.op].weighted or len(n.inputs) < 2 or n.inputs[1] is None:
        return None
    s = g.shape(n.inputs[1])
    ax = weight_axes(n)[0]
    return int(s[ax]) if s is not None and len(s) > ax and s[ax] is not None else None


def _facts(side: Side, name: str) -> dict[str, Any]:
    g = side.graph
    n = g.nodes[name]
    ws = _weights(g, n)
    return {"outputs": [_shape(g.shape(t)) for t in n.outputs],
            "weights": [_shape(g.shape(t)) for t in ws],
            "channels": _channels(g, n), "flops": side.cost.per_node.get(name, 0),
            "params": sum(_numel(g.shape(t)) or 0 for t in ws)}


def _kept(fa: dict, fb: dict) -> float | None:
    if fa["channels"] and fb["channels"] is not None:
        return fb["channels"] / fa["channels"]
    na = _numel(fa["outputs"][0]) if fa["outputs"] else None
    nb = _numel(fb["outputs"][0]) if fb["outputs"] else None
    return nb / na if na and nb is not None else None


def _weights_change(a: Side, b: Side, na: str, nb: str) -> float | None:
    """Relative change of the node's trainable weights when their shapes are equal in A and B
    (0.0: identical values); ``None`` when shapes differ or there are none."""
    wa, wb = _weights(a.graph, a.graph.nodes[na]), _weights(b.graph, b.graph.nodes[nb])
    if not wa or len(wa) != len(wb):
        return None
    num = den = 0.0
    for ta, tb in zip(wa, wb):
        try:
            va = np.asarray(a.graph.tensors[ta].value(), dtype=np.float64)
            vb = np.asarray(b.graph.tensors[tb].value(), dtype=np.float64)
        except ValueError:
            return None
        if va.shape != vb.shape:
            return None
        num += float(np.sum((va - vb) ** 2))
        den += float(np.sum(va * va))
    return round(float(np.sqrt(num / den)) if den else float(num > 0), 6)


def _record(a: Side, b: Side, na: str | None, nb: str | None, how: str | None,
            status: str | None = None, block: str | None = None) -> NodeDiff:
    fa = _facts(a, na) if na is not None else None
    fb = _facts(b, nb) if nb is not None else None
    op = (a.graph.nodes[na] if na is not None else b.graph.nodes[nb]).source
    change = _weights_change(a, b, na, nb) if fa is not None and fb is not None else None
    if status is None:
        if fa is None:
            status = "added"
        elif fa != fb:
            status = "changed"
        else:
            status = "retuned" if change else "same"
    if fa is not None and fb is not None:
        kept = _kept(fa, fb)
    else:
        kept = 0.0 if fb is None else None
    get = lambda f, k: None if f is None else f[k]  # noqa: E731
    return NodeDiff(na, nb, op, status, how, block,
                    get(fa, "outputs"), get(fb, "outputs"), get(fa, "weights"),
                    get(fb, "weights"), get(fa, "channels"), get(fb, "channels"), kept,
                    get(fa, "flops"), get(fb, "flops"), get(fa, "params"), get(fb, "params"),
                    change, b.healed(nb) if nb is not None else None)


def _bypassed(a: Side, m: Matching) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Residual blocks of A whose every layer is gone from B: node -> block key, and a summary
    of each block (its add survives in B when the bypass substituted the branch's mean)."""
    owner: dict[str, str] = {}
    found = []
    blocks = sorted(blocks_pass.find(a.graph), key=lambda blk: -len(blk.nodes))
    for blk in blocks:
        layers = [n for n in blk.nodes if OPS[a.graph.nodes[n].op].weighted]
        if not layers or any(n in m.a_to_b for n in layers):
            continue
        gone = [n for n in blk.nodes + [blk.add] if n not in m.a_to_b and n not in owner]
        for n in gone:
            owner[n] = blk.key
        found.append({"key": blk.key, "add": blk.add, "add_kept": blk.add in m.a_to_b,
                      "nodes": [n for n in blk.nodes if n in gone],
                      "flops": sum(a.cost.per_node.get(n, 0) for n in gone)})
    found.sort(key=lambda d: int(d["key"][1:]))
    return owner, found


def diff(a_path: str | os.PathLike, b_path: str | os.PathLike) -> Diff:
    """Compare two ONNX files (any two; they need not come from idapgraph)."""
    a, b = Side.load(a_path), Side.load(b_path)
    m = match(a.graph, b.graph, a.real_names, b.real_names)
    owner, blocks = _bypassed(a, m)
    records: list[NodeDiff] = []
    after: dict[str | None, list[str]] = {}  # A node -> B nodes added right after its partner
    last = None
    for n in b.graph.nodes:
        if n in m.b_to_a:
            last = m.b_to_a[n]
        else:
            after.setdefault(last, []).append(n)
    for nb in after.get(None, []):
        records.append(_record(a, b, None, nb, None))
    for na in a.graph.nodes:
        nb = m.a_to_b.get(na)
        if nb is None:
            block = owner.get(na)
            records.append(_record(a, b, na, None, None, "bypassed" if block else "removed",
                                   block))
        else:
            records.append(_record(a, b, na, nb, m.how[na], None, None))
        for added in after.get(na, []):
            records.append(_record(a, b, None, added, None))
    return Diff(a, b, m, records, blocks)
