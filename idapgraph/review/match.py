"""Node matching between two IR graphs of (possibly) the same model.

Four rules, applied in this order and only between nodes of the same ONNX op type:

1. ``name``: equal node names, where both names come from the files (names that the ONNX
   frontend generated for unnamed or duplicate nodes do not count);
2. ``tensor``: equal first-output tensor names (graphs whose nodes are unnamed but whose
   tensors are);
3. ``structure``: the same op reading the same (already matched) producers, position by
   position; among several candidates (parallel branches off one tensor) the one whose
   weights have the same kernel shape, else the first in execution order;
4. ``order``: between two consecutive matched anchors, the unmatched nodes of both graphs are
   aligned by their op-type sequences (longest common subsequence), which matches the nodes
   around a removed or bypassed one.

Rules 3 and 4 alternate until nothing new matches. A node of A left without a partner is gone
from B; a node of B left without one was added.
"""

from __future__ import annotations

import bisect
import difflib
from dataclasses import dataclass, field

from ..ir.graph import PARAM, Graph, Node


@dataclass
class Matching:
    a_to_b: dict[str, str] = field(default_factory=dict)
    b_to_a: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)  # A node -> rule that matched it

    def add(self, a: str, b: str, how: str) -> None:
        self.a_to_b[a] = b
        self.b_to_a[b] = a
        self.how[a] = how

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("name", "tensor", "structure", "order")}
        for h in self.how.values():
            out[h] += 1
        return out


def _producers(g: Graph, n: Node) -> tuple | None:
    """Producer of each non-parameter input: a node name or ("input", position)."""
    refs = []
    for t in n.present_inputs():
        tensor = g.tensors[t]
        if tensor.kind == PARAM:
            continue
        if tensor.producer is not None:
            refs.append(tensor.producer)
        elif t in g.inputs:
            refs.append(("input", g.inputs.index(t)))
        else:
            refs.append(("const", t))
    return tuple(refs)


def _kernel(g: Graph, n: Node) -> tuple:
    """Shape signature that survives channel pruning: rank and trailing dims of each weight."""
    sig = []
    for t in n.present_inputs():
        s = g.tensors[t].shape
        if g.tensors[t].kind == PARAM and s is not None:
            sig.append((len(s), tuple(s[2:])))
    return tuple(sig)


def match(ga: Graph, gb: Graph, real_a: set[str], real_b: set[str]) -> Matching:
    """Match the nodes of ``ga`` and ``gb``. ``real_a``/``real_b``: node names that the files
    themselves carry (the only names rule 1 trusts)."""
    m = Matching()
    src_a = {n.name: n.source for n in ga}
    src_b = {n.name: n.source for n in gb}

    for n in gb:  # 1. names
        if n.name in real_b and n.name in real_a and src_a.get(n.name) == n.source:
            m.add(n.name, n.name, "name")

    first_out_a = {}
    for n in ga:
        if n.name not in m.a_to_b and n.outputs:
            first_out_a.setdefault(n.outputs[0], n.name)
    for n in gb:  # 2. output tensor names
        if n.name in m.b_to_a or not n.outputs:
            continue
        a = first_out_a.get(n.outputs[0])
        if a is not None and a not in m.a_to_b and src_a[a] == n.source:
            m.add(a, n.name, "tensor")

    while _structure(ga, gb, m) + _order(ga, gb, m, src_a, src_b):
        pass
    return m


def _structure(ga: Graph, gb: Graph, m: Matching) -> int:
    index: dict[tuple, list[str]] = {}
    for n in ga:
        if n.name not in m.a_to_b:
            index.setdefault((n.source, _producers(ga, n)), []).append(n.name)
    added = 0
    for n in gb:  # execution order: a match here can unlock the next node's key
        if n.name in m.b_to_a:
            continue
        refs = []
        for r in _producers(gb, n):
            if isinstance(r, tuple):
                refs.append(r if r[0] == "input" else None)
            else:
                refs.append(m.b_to_a.get(r))
        if any(r is None for r in refs):
            continue
        cands = [c for c in index.get((n.source, tuple(refs)), []) if c not in m.a_to_b]
        if not cands:
            continue
        kb = _kernel(gb, n)
        pick = next((c for c in cands if _kernel(ga, ga.nodes[c]) == kb), cands[0])
        m.add(pick, n.name, "structure")
        added += 1
    return added


def _anchors(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest chain of matched (position in A, position in B) pairs increasing in both."""
    pairs = sorted(pairs)
    tails: list[int] = []  # smallest B position ending a chain of each length
    tail_idx: list[int] = []
    prev = [-1] * len(pairs)
    for i, (_, pb) in enumerate(pairs):
        k = bisect.bisect_left(tails, pb)
        if k == len(tails):
            tails.append(pb)
            tail_idx.append(i)
        else:
            tails[k], tail_idx[k] = pb, i
        prev[i] = tail_idx[k - 1] if k else -1
    chain, i = [], tail_idx[-1] if tail_idx else -1
    while i >= 0:
        chain.append(pairs[i])
        i = prev[i]
    return chain[::-1]


def _order(ga: Graph, gb: Graph, m: Matching, src_a: dict, src_b: dict) -> int:
    la, lb = list(ga.nodes), list(gb.nodes)
    pos_b = {n: i for i, n in enumerate(lb)}
    pairs = [(i, pos_b[m.a_to_b[n]]) for i, n in enumerate(la) if n in m.a_to_b]
    bounds = [(-1, -1)] + _anchors(pairs) + [(len(la), len(lb))]
    added = 0
    for (a0, b0), (a1, b1) in zip(bounds, bounds[1:]):
        gap_a = [n for n in la[a0 + 1:a1] if n not in m.a_to_b]
        gap_b = [n for n in lb[b0 + 1:b1] if n not in m.b_to_a]
        if not gap_a or not gap_b:
            continue
        sm = difflib.SequenceMatcher(None, [src_a[n] for n in gap_a], [src_b[n] for n in gap_b],
                                     autojunk=False)
        for blk in sm.get_matching_blocks():
            for k in range(blk.size):
                m.add(gap_a[blk.a + k], gap_b[blk.b + k], "order")
                added += 1
    return added
