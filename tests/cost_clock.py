"""A deterministic stand-in for onnxruntime's clock (:mod:`idapgraph.runners.clock`): a layer
costs its multiply-adds (a kernel-unfriendly output count, not a multiple of 8, 1.5x more), a
model the sum over its own conv/linear layers plus a fixed call overhead. Latency-target tests
run on it, so their assertions hold on a loaded machine: what they check is the selection, the
closed loop and the report, not this machine's timings (those are benchmarks, in ``tools/``)."""

from __future__ import annotations

import numpy as np

import idapgraph
from idapgraph.passes import latency as lat
from idapgraph.ir.ops import weighted_nodes


def layer_cost(sig: dict, cin: int, cout: int) -> float:
    """Milliseconds of a layer on the cost model."""
    size = np.prod(sig.get("spatial", [1])) * np.prod(sig.get("kernel", [1])) * sig.get("rows", 1)
    slow = 1.0 if cout % 8 == 0 else 1.5
    return float(1e-6 * size * cin * cout * slow / (sig.get("group_in") and cin or 1))


class CostClock:
    """Counts its calls: ``layers`` (table entries timed) and ``models`` (models measured)."""

    OVERHEAD_MS = 0.01

    def __init__(self) -> None:
        self.layers = 0
        self.models = 0

    def machine(self, threads: int, provider: str) -> dict:
        return {"clock": "cost model", "threads": int(threads), "provider": provider,
                "timing": 1}

    def layer(self, sig: dict, cin: int, cout: int, *, threads: int, provider: str) -> float:
        self.layers += 1
        return layer_cost(sig, cin, cout)

    def model(self, model, *, threads: int = 1, provider: str = "", runs: int = 20) -> float:
        self.models += 1
        return self.OVERHEAD_MS + layers_cost(model)

    def pair(self, reference, candidate, *, threads: int = 1, provider: str = "",
             runs: int = 20) -> tuple[float, float]:
        return (self.model(reference, threads=threads, provider=provider),
                self.model(candidate, threads=threads, provider=provider))


def layers_cost(model) -> float:
    """Σ :func:`layer_cost` over the conv/linear layers of an ONNX model, read off its own
    graph (a layer without a signature costs nothing)."""
    g = idapgraph.analyze(model).graph
    total = 0.0
    for n in weighted_nodes(g):
        ls = lat.layer_signature(g, n)
        if ls is not None:
            sig, sin, sout = ls
            total += layer_cost(sig, g.shape(sin.tensor)[sin.axis], g.shape(sout.tensor)[sout.axis])
    return total
