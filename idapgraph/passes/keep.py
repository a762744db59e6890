"""Protect nodes the user names (``--keep PATTERN``): channel groups touching them are frozen.

A pattern is an ``fnmatch`` glob (case-sensitive) tried against every name a node goes by: its IR
name, names the backend gave it (``aliases``, e.g. an fx module path ``layer1.0.conv1``) and the
names of the parameters it reads (``layer1.0.conv1.weight``). Blocks holding a kept node are
left to the caller (stage 2 skips them).
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Iterable, Mapping

from ..ir.annotations import Coupling, FrozenSpot
from ..ir.graph import PARAM, Graph
from .coupling import weight_roles

REASON = "kept by --keep"


def names(graph: Graph, node: str, aliases: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Every name ``node`` goes by (see the module doc)."""
    n = graph.nodes[node]
    params = [t for t in n.present_inputs() if graph.tensors[t].kind == PARAM]
    return [node, *((aliases or {}).get(node, ())), *params]


def matching(graph: Graph, patterns: Iterable[str],
             aliases: Mapping[str, Iterable[str]] | None = None) -> set[str]:
    """IR names of the nodes any of ``patterns`` matches."""
    pats = list(patterns)
    return {n for n in graph.nodes
            if any(fnmatchcase(name, p) for name in names(graph, n, aliases) for p in pats)}


def touched_groups(graph: Graph, coupling: Coupling, nodes: Iterable[str]) -> list[str]:
    """Keys of the channel groups with an axis on a tensor that one of ``nodes`` reads or writes."""
    tensors = {t for n in nodes for t in (*graph.nodes[n].present_inputs(), *graph.nodes[n].outputs)}
    return [g.key for g in coupling.groups
            if any(s.tensor in tensors for m in g.members for s in m.spaces)]


def protect(graph: Graph, coupling: Coupling, nodes: Iterable[str]) -> Coupling:
    """``coupling`` without the groups touching ``nodes``; each weighted layer of a removed group
    becomes a frozen spot with the reason :data:`REASON`. Other groups keep their keys."""
    gone = set(touched_groups(graph, coupling, nodes))
    if not gone:
        return coupling
    roles = weight_roles(graph)
    spots = []
    for g in coupling.groups:
        if g.key in gone:
            for m in g.members:
                for s in m.spaces:
                    if s in roles:
                        _, role, layer = roles[s]
                        spots.append(FrozenSpot(layer=layer, source=graph.nodes[layer].source,
                                                role=role, channels=g.n_units, reason=REASON))
    position = {name: i for i, name in enumerate(graph.nodes)}
    frozen = sorted(coupling.frozen + spots, key=lambda f: (position[f.layer], f.role))
    return replace(coupling, groups=[g for g in coupling.groups if g.key not in gone],
                   frozen=frozen)
