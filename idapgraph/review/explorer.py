"""Node-data overlays for Google's Model Explorer (``ai-edge-model-explorer`` with the ONNX
adapter ``model-explorer-onnx``), one per model of a diff:

    model-explorer A.onnx --extensions=model_explorer_onnx --node_data_paths=DIR/a.json
    model-explorer B.onnx --extensions=model_explorer_onnx --node_data_paths=DIR/b.json

The files follow Model Explorer's node-data format for a single graph (``GraphNodeData`` in
``model_explorer/node_data_builder.py``): ``{"name": ..., "results": {node id: {"value": v,
"bgColor": c}}}``. The value of a node is the fraction it keeps (output channels of a
conv/linear layer, otherwise of its first output); removed and bypassed nodes of A have value 0
and are red, nodes added in B are blue. Every colour is given per node on an absolute scale
(red 0, yellow 0.5, green 1 for changed nodes, transparent for unchanged ones), so the colours do
not depend on the range of values in one file.

Node ids are the ones the ONNX adapter assigns: the node's name after onnx-ir's ``NameFixPass``
(the adapter runs it on load), which keeps unique names and names unnamed nodes ``node``,
``node_1``, …. IR nodes are tied to the file's nodes by their first output tensor, so nodes the
frontend normalised away (``Constant``s, identities of weights, folded shape arithmetic) get no
entry.
"""

from __future__ import annotations

from ..frontends.onnx_names import node_ids
from .diff import Diff, Side

RED = "#d73027"  # removed
DARK_RED = "#a50026"  # bypassed (a whole residual branch)
BLUE = "#4575b4"  # added in B
UNCHANGED = "transparent"
_SCALE = ((0.0, (0xd7, 0x30, 0x27)), (0.5, (0xfe, 0xe0, 0x8b)), (1.0, (0x1a, 0x98, 0x50)))


def color(kept: float) -> str:
    """The scale's colour for a kept fraction in [0, 1] (clamped)."""
    v = min(max(kept, 0.0), 1.0)
    for (s0, c0), (s1, c1) in zip(_SCALE, _SCALE[1:]):
        if v <= s1:
            f = (v - s0) / (s1 - s0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#1a9850"


def _ids_by_ir_node(side: Side) -> dict[str, str]:
    ids = node_ids(side.raw)
    by_output = {}
    for node, nid in zip(side.raw.graph.node, ids):
        for t in node.output:
            if t:
                by_output[t] = nid
    out = {}
    for n in side.graph:
        nid = by_output.get(n.outputs[0]) if n.outputs else None
        if nid is not None:
            out[n.name] = nid
    return out


def overlays(d: Diff) -> dict[str, dict]:
    """``{"a": node data for A, "b": node data for B}``."""
    ids = {"a": _ids_by_ir_node(d.a), "b": _ids_by_ir_node(d.b)}
    results: dict[str, dict[str, dict]] = {"a": {}, "b": {}}
    for r in d.nodes:
        if r.status in ("removed", "bypassed"):
            entry = {"value": 0.0, "bgColor": DARK_RED if r.status == "bypassed" else RED}
        elif r.status == "added":
            entry = {"value": 1.0, "bgColor": BLUE}
        else:
            kept = 1.0 if r.kept is None else round(float(r.kept), 6)
            entry = {"value": kept, "bgColor": UNCHANGED if r.status == "same" else color(kept)}
        for side, name in (("a", r.a), ("b", r.b)):
            if name is not None and name in ids[side]:
                results[side][ids[side][name]] = dict(entry)
    return {side: {"name": f"idapgraph diff: kept ({side.upper()})", "results": results[side]}
            for side in ("a", "b")}


def check_dir(path) -> None:
    """The overlay folder may exist or be created in an existing folder."""
    import os
    from pathlib import Path

    from ..errors import InputError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"--model-explorer {p}: exists and is not a folder")
    parent = p.resolve().parent
    if not p.exists() and not parent.is_dir():
        raise InputError(f"--model-explorer {p}: folder {parent} does not exist")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise InputError(f"--model-explorer {p}: not writable")


def write(d: Diff, path) -> list[str]:
    """Write ``a.json`` and ``b.json`` into folder ``path`` (created if missing), atomically."""
    import json
    from pathlib import Path

    from ..emit.save import write_bytes_atomic

    check_dir(path)
    p = Path(path)
    p.mkdir(exist_ok=True)
    out = []
    for side, data in overlays(d).items():
        f = p / f"{side}.json"
        write_bytes_atomic(f, json.dumps(data, indent=1).encode())
        out.append(str(f))
    return out
