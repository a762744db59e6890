"""Can onnxruntime run this model at all? idapgraph validates every output it emits by running
it, so a node from an op domain onnxruntime does not know is refused up front (bad input)."""

from __future__ import annotations

from functools import lru_cache

import onnx

from ..errors import InputError

_STANDARD = ("", "ai.onnx")


@lru_cache(maxsize=1)
def _ort_ops() -> frozenset[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    return frozenset((s.domain, s.name) for s in ort_c.get_all_operator_schema())


def _nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _nodes(g)


def unknown_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes outside the standard domain whose (domain, op) neither onnxruntime nor one of the
    model's own functions defines."""
    local = {(f.domain, f.name) for f in model.functions}
    known = _ort_ops()
    return [n for n in _nodes(model.graph)
            if n.domain not in _STANDARD and (n.domain, n.op_type) not in known | local]


def check_runnable(model: onnx.ModelProto) -> None:
    """Raise :class:`InputError` naming the first node onnxruntime cannot run."""
    bad = unknown_ops(model)
    if bad:
        n = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"node {n.name or n.op_type!r} uses op {n.domain}.{n.op_type}{more}, from "
                         "an op domain onnxruntime does not know; idapgraph runs every model it "
                         "emits to validate it, so it cannot compress this one")
