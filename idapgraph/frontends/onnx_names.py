"""Node ids as Google's Model Explorer names the nodes of an ONNX model (its adapter runs
onnx-ir's ``NameFixPass``; without onnx-ir the same rule is applied here), so that overlays
written by ``idapgraph diff --model-explorer`` land on the right nodes."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def node_ids(model: onnx.ModelProto) -> list[str]:
    """Model Explorer's ids of the main graph's nodes, in file order."""
    try:
        import onnx_ir as ir
        from onnx_ir.passes.common import NameFixPass
    except ImportError:  # the same rule for the main graph, without onnx-ir
        return _fix_names([n.name for n in model.graph.node])
    try:
        m = ir.serde.deserialize_model(model)
        NameFixPass()(m)
    except Exception:  # noqa: BLE001 - onnx-ir refuses some files the adapter would too
        return _fix_names([n.name for n in model.graph.node])
    return [n.name for n in m.graph]


def _fix_names(names: list[str]) -> list[str]:
    used: set[str] = set()
    counter: collections.Counter[str] = collections.Counter()
    out = []
    for name in names:
        base = name or "node"
        new = base
        while new in used:
            counter[base] += 1
            new = f"{base}_{counter[base]}"
        used.add(new)
        out.append(new)
    return out
