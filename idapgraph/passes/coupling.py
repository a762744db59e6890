"""Coupled-channel analysis.

Runs every node's rule from the op table, unions identical axes (space level), then ties
individual indices across concat offsets, flatten blocks and conv groups (element level, with
scipy's connected components). A connected set of channel indices is one removable *unit*; units
with the same shape across the same axes form a :class:`ChannelGroup`. A unit touching any frozen
axis (model inputs/outputs, ops without a rule, LayerNorm axes, run-time reshapes …) is frozen.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import islice

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..ir.annotations import ChannelGroup, Coupling, FrozenSpot, Member
from ..ir.graph import META, PARAM, Graph, Node
from ..ir.ops import OPS, Relations, Space, weight_axes, weighted_nodes


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Space, Space] = {}

    def find(self, x: Space) -> Space:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Space, b: Space) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def collect_relations(graph: Graph) -> Relations:
    """Apply the op table to every node; undescribed axes and model boundaries are frozen."""
    rel = Relations(graph)
    for node in graph:
        rel.described = set()
        n_frozen = len(rel.frozen)
        tensors = [graph.tensors[t] for t in node.present_inputs() + node.outputs]
        if node.op != "meta" and any(t.kind != META and t.shape is None for t in tensors):
            OPS["unknown"].couple(Node(node.name, "unknown", node.inputs, node.outputs,
                                       {"reason": "a tensor of unknown rank"}, node.source), rel)
        else:
            try:
                OPS[node.op].couple(node, rel)
            except Exception as e:  # noqa: BLE001 - a failing rule freezes, never breaks
                rel.described = set()
                OPS["unknown"].couple(Node(node.name, "unknown", node.inputs, node.outputs, {
                    "reason": f"internal: {node.op} rule failed ({type(e).__name__}: {e})"},
                    node.source), rel)
        where = f" (at {node.source or node.op} {node.name})"
        for t in node.present_inputs() + node.outputs:
            if graph.tensors[t].kind == META:
                continue
            for ax in range(rel.rank(t)):
                s = Space(t, ax)
                if s not in rel.described:
                    rel.frozen.setdefault(s, f"axis not described by the {node.op} rule")
        # attach the location to the reasons this node added (the newest keys: dicts keep
        # insertion order; walking back from the end keeps this linear in the graph's size)
        for s in islice(reversed(rel.frozen), len(rel.frozen) - n_frozen):
            if " (at " not in rel.frozen[s]:
                rel.frozen[s] += where
    for t in graph.inputs:
        rel.freeze_all(t, "model input")
    for t in graph.outputs:
        rel.freeze_all(t, "model output")
    return rel


def weight_roles(graph: Graph) -> dict[Space, tuple[int, str, str]]:
    """(weight tensor, axis) -> (ordinal among weighted ops, 'out'|'in', node name)."""
    roles: dict[Space, tuple[int, str, str]] = {}
    for i, node in enumerate(weighted_nodes(graph)):
        w = node.inputs[1]
        if w is None or graph.tensors[w].rank is None or graph.tensors[w].rank < 2:
            continue
        out_ax, in_ax = weight_axes(node)
        roles.setdefault(Space(w, out_ax), (i, "out", node.name))
        if int(node.attrs.get("groups", 1)) == 1:  # a grouped conv's weight has no input-channel axis
            roles.setdefault(Space(w, in_ax), (i, "in", node.name))
    return roles


def analyze(graph: Graph) -> Coupling:
    """Compute channel groups and frozen spots for ``graph``."""
    rel = collect_relations(graph)
    space_class, class_spaces, class_size, frozen_reason = _space_classes(graph, rel)
    label, n_comp, elem_cls, elem_idx = _element_components(rel, space_class, class_size,
                                                            frozen_reason)
    roles = weight_roles(graph)
    by_signature, frozen_by_sig, frozen_sig_reason = _unit_signatures(
        graph, class_spaces, frozen_reason, label, n_comp, elem_cls, elem_idx)
    return Coupling(groups=_channel_groups(by_signature, class_spaces, roles),
                    frozen=_frozen_spots(graph, frozen_by_sig, frozen_sig_reason, class_spaces,
                                         roles),
                    space_class=space_class, class_size=class_size, class_spaces=class_spaces)


def _space_classes(graph: Graph, rel: Relations):
    """Space level: union the identical axes of ``rel`` into classes. Returns (space -> class,
    class -> spaces, class -> size or None, frozen class -> why)."""
    uf = _UnionFind()
    all_spaces = []
    for name, t in graph.tensors.items():
        if t.kind == META or t.shape is None:
            continue
        for ax in range(len(t.shape)):
            s = Space(name, ax)
            uf.find(s)
            all_spaces.append(s)
    for a, b in rel.same_pairs:
        uf.union(a, b)
    roots: dict[Space, int] = {}
    space_class: dict[Space, int] = {}
    class_spaces: list[list[Space]] = []
    for s in all_spaces:
        r = uf.find(s)
        if r not in roots:
            roots[r] = len(class_spaces)
            class_spaces.append([])
        space_class[s] = roots[r]
        class_spaces[roots[r]].append(s)
    class_size: list[int | None] = [None] * len(class_spaces)
    frozen_reason: dict[int, str] = {}
    for c, spaces in enumerate(class_spaces):
        sizes = {graph.tensors[s.tensor].shape[s.axis] for s in spaces}
        if len(sizes) != 1 or None in sizes:
            frozen_reason[c] = "unknown or inconsistent size"
        else:
            class_size[c] = sizes.pop()
    for s, why in rel.frozen.items():
        if s in space_class:
            frozen_reason.setdefault(space_class[s], why)
    return space_class, class_spaces, class_size, frozen_reason


def _element_components(rel: Relations, space_class: dict[Space, int],
                        class_size: list[int | None], frozen_reason: dict[int, str]):
    """Element level: tie individual indices (``rel.links``) into connected components, freezing
    (in ``frozen_reason``) the classes of ties that cannot be followed. The elements are the
    classes' indices laid end to end; returns (component per element, number of components,
    class per element, index within its class per element)."""
    n_cls = len(class_size)
    base = np.zeros(n_cls + 1, dtype=np.int64)
    base[1:] = np.cumsum([0 if n is None else n for n in class_size])
    total = int(base[-1])
    rows, cols = [], []
    for sa, ia, sb, ib in rel.links:
        ca, cb = space_class.get(sa), space_class.get(sb)
        if ca is None or cb is None or class_size[ca] is None or class_size[cb] is None:
            if ca is not None:
                frozen_reason.setdefault(ca, "tied to an axis of unknown size")
            if cb is not None:
                frozen_reason.setdefault(cb, "tied to an axis of unknown size")
            continue
        if (ia >= class_size[ca]).any() or (ib >= class_size[cb]).any():
            frozen_reason.setdefault(ca, "index tie out of range")
            frozen_reason.setdefault(cb, "index tie out of range")
            continue
        rows.append(base[ca] + ia)
        cols.append(base[cb] + ib)
    if rows:
        r = np.concatenate(rows)
        c = np.concatenate(cols)
    else:
        r = c = np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    n_comp, label = connected_components(adj, directed=False)
    elem_cls = np.repeat(np.arange(n_cls), [0 if n is None else n for n in class_size])
    elem_idx = np.arange(total) - base[elem_cls]
    return label, n_comp, elem_cls, elem_idx


def _unit_signatures(graph: Graph, class_spaces: list[list[Space]], frozen_reason: dict[int, str],
                     label: np.ndarray, n_comp: int, elem_cls: np.ndarray,
                     elem_idx: np.ndarray):
    """Units (components touching a parameter) keyed by signature ((class, indices) per class
    they span). Returns (signature -> free units as class -> indices, signature -> frozen
    units, signature -> why its units are frozen)."""
    frozen_cls = np.zeros(len(class_spaces), dtype=bool)
    frozen_cls[list(frozen_reason)] = True
    comp_frozen = np.zeros(n_comp, dtype=bool)
    np.logical_or.at(comp_frozen, label, frozen_cls[elem_cls])
    has_param_cls = np.array(
        [any(graph.tensors[s.tensor].kind == PARAM for s in sp) for sp in class_spaces], dtype=bool)
    comp_param = np.zeros(n_comp, dtype=bool)
    np.logical_or.at(comp_param, label, has_param_cls[elem_cls])
    order = np.lexsort((elem_idx, elem_cls, label))
    lab_sorted = label[order]
    bounds = np.flatnonzero(np.diff(lab_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    by_signature: dict[tuple, list[dict[int, list[int]]]] = defaultdict(list)
    frozen_by_sig: dict[tuple, int] = defaultdict(int)
    frozen_sig_reason: dict[tuple, str] = {}
    # plain lists: a component has a handful of elements, numpy calls per component cost more
    cls_sorted, idx_sorted = elem_cls[order].tolist(), elem_idx[order].tolist()
    lab, param, frozen = lab_sorted.tolist(), comp_param.tolist(), comp_frozen.tolist()
    for s0, e0 in zip(starts.tolist(), ends.tolist()):
        comp = lab[s0]
        if not param[comp]:
            continue
        parts: dict[int, list[int]] = {}  # class -> indices, classes in ascending order
        for c, i in zip(cls_sorted[s0:e0], idx_sorted[s0:e0]):
            parts.setdefault(c, []).append(i)
        sig = tuple((c, len(p)) for c, p in parts.items())
        if frozen[comp]:
            frozen_by_sig[sig] += 1
            if sig not in frozen_sig_reason:
                frozen_sig_reason[sig] = next(
                    (frozen_reason[cid] for cid, _ in sig if cid in frozen_reason), "frozen")
            continue
        by_signature[sig].append(parts)
    return by_signature, frozen_by_sig, frozen_sig_reason


def _channel_groups(by_signature: dict[tuple, list[dict[int, list[int]]]],
                    class_spaces: list[list[Space]],
                    roles: dict[Space, tuple[int, str, str]]) -> list[ChannelGroup]:
    """One group per signature of free units, ordered and named by its anchor (:func:`_anchor`);
    a repeated name gets a ``#n`` suffix."""
    groups: list[tuple[tuple, ChannelGroup]] = []
    for sig, units in by_signature.items():
        anchor_cls, sort_key = _anchor(sig, class_spaces, roles)
        anchor_space = sort_key[1]
        units.sort(key=lambda u: int(u[anchor_cls][0]))
        members = [Member(spaces=class_spaces[cid],
                          index=np.array([u[cid] for u in units], dtype=np.int64))
                   for cid, _ in sig]
        first = int(units[0][anchor_cls][0])
        groups.append(((sort_key[0], first), ChannelGroup(key=sort_key[2], members=members,
                                                          anchor=anchor_space)))
    groups.sort(key=lambda kg: kg[0])
    seen: dict[str, int] = defaultdict(int)
    out_groups = []
    for _, g in groups:
        seen[g.key] += 1
        if seen[g.key] > 1:
            g.key = f"{g.key}#{seen[g.key]}"
        out_groups.append(g)
    return out_groups


def _frozen_spots(graph: Graph, frozen_by_sig: dict[tuple, int],
                  frozen_sig_reason: dict[tuple, str], class_spaces: list[list[Space]],
                  roles: dict[Space, tuple[int, str, str]]) -> list[FrozenSpot]:
    """The weight axes holding frozen units, in graph order: per weighted layer and role, how
    many channels are frozen and why."""
    frozen: list[FrozenSpot] = []
    for sig, n in frozen_by_sig.items():
        reason = frozen_sig_reason[sig]  # once: a signature can span thousands of classes
        for cid, _ in sig:
            for s in class_spaces[cid]:
                if s in roles:
                    ordinal, role, node_name = roles[s]
                    frozen.append(FrozenSpot(layer=node_name, source=graph.nodes[node_name].source,
                                             role=role, channels=n, reason=reason))
    position = {name: i for i, name in enumerate(graph.nodes)}
    frozen.sort(key=lambda f: (position[f.layer], f.role))
    return frozen


def _anchor(sig, class_spaces, roles):
    """Pick the axis that names and orders a group: the earliest weighted op's output channels,
    else its input channels, else the first parameter axis."""
    best = None
    for cid, _ in sig:
        for s in class_spaces[cid]:
            if s in roles:
                ordinal, role, _ = roles[s]
                key = (ordinal, 0 if role == "out" else 1)
                if best is None or key < best[0]:
                    best = (key, cid, s, f"w{ordinal}.{role}")
    if best is None:
        cid = sig[0][0]
        s = class_spaces[cid][0]
        return cid, ((10**9, 0), s, f"p.{s.tensor}.{s.axis}")
    key, cid, s, name = best
    return cid, (key, s, name)
