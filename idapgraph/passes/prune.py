"""Resolve a :class:`~idapgraph.ir.plan.Plan` against a graph into a :class:`Rewrite`."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..ir.annotations import Coupling
from ..ir.graph import META, Graph
from ..ir.ops import OPS, Space
from ..ir.plan import Plan, Rewrite


class PlanError(ValueError):
    """A plan that does not fit the graph it is applied to."""


def removed_by_class(coupling: Coupling, plan: Plan) -> dict[int, np.ndarray]:
    out: dict[int, list[np.ndarray]] = defaultdict(list)
    keys = {g.key: g for g in coupling.groups}
    for key, units in plan.remove.items():
        if not units:
            continue
        g = keys.get(key)
        if g is None:
            raise PlanError(f"plan names channel group {key!r}, which this model does not have")
        if key in plan.units and plan.units[key] != g.n_units:
            raise PlanError(f"channel group {key!r} has {g.n_units} units here, "
                            f"the plan was made for {plan.units[key]}")
        u = np.unique(np.asarray(units, dtype=np.int64))
        if u.min() < 0 or u.max() >= g.n_units:
            raise PlanError(f"plan removes unit {int(u.max())} of group {key!r} "
                            f"(it has {g.n_units})")
        if len(u) >= g.n_units:
            raise PlanError(f"plan removes every unit of channel group {key!r}")
        for m in g.members:
            cid = coupling.space_class[m.spaces[0]]
            out[cid].append(m.index[u].ravel())
    return {c: np.unique(np.concatenate(v)) for c, v in out.items()}


def shape_fn(graph: Graph, coupling: Coupling, removed_count: dict[int, int] | np.ndarray):
    """Tensor shapes after removing ``removed_count[class]`` indices from each space class."""
    cache: dict[str, tuple] = {}

    def removed_of(c: int | None) -> int:
        if c is None:
            return 0
        if isinstance(removed_count, dict):
            return int(removed_count.get(c, 0))
        return int(removed_count[c])

    def shape(name: str):
        if name in cache:
            return cache[name]
        old = graph.tensors[name].shape
        if old is None or graph.tensors[name].kind == META:
            cache[name] = old
            return old
        new = []
        for ax, d in enumerate(old):
            new.append(d if d is None else d - removed_of(coupling.space_class.get(Space(name, ax))))
        cache[name] = tuple(new)
        return cache[name]

    return shape


def resolve(graph: Graph, coupling: Coupling, plan: Plan) -> Rewrite:
    removed = removed_by_class(coupling, plan)
    counts = {c: len(v) for c, v in removed.items()}
    new = shape_fn(graph, coupling, counts)
    keep: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    gone: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for cid, idx in removed.items():
        size = coupling.class_size[cid]
        kept = np.setdiff1d(np.arange(size), idx)
        for s in coupling.class_spaces[cid]:
            keep[s.tensor][s.axis] = kept
            gone[s.tensor][s.axis] = idx

    def kept(t: str, ax: int):
        return keep.get(t, {}).get(ax)

    attrs: dict[str, dict] = {}
    for node in graph:
        rule = OPS[node.op].rewrite
        if rule is None:
            continue
        if not any(t in keep for t in node.present_inputs() + node.outputs):
            continue
        upd = rule(node, graph.shape, new, kept)
        if upd:
            attrs[node.name] = upd
    new_shapes = {name: new(name) for name in graph.tensors}
    return Rewrite(keep=dict(keep), removed=dict(gone), attrs=attrs, new_shapes=new_shapes)


def masked_values(graph: Graph, rewrite: Rewrite):
    """Parameter getter of the model with the rewrite's channels zeroed (not removed)."""
    cache: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in cache:
            v = np.array(graph.tensors[name].value())
            for ax, idx in rewrite.removed.get(name, {}).items():
                sl = [slice(None)] * v.ndim
                sl[ax] = idx
                v[tuple(sl)] = 0
            cache[name] = v
        return cache[name]

    return value
