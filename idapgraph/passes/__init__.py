"""Analysis and rewrite passes. Each is a plain function over the IR (no torch, no onnx):

* ``coupling.analyze(graph) -> Coupling``
* ``cost.count(graph, shape=None) -> Cost``
* ``scoring.magnitude|taylor|random(...)``, ``divergence.requests|scores(...)`` -> per-group unit scores
* ``select.select(graph, coupling, scores, flops=, params=) -> Selection``
* ``prune.resolve(graph, coupling, plan) -> Rewrite``
"""

from . import coupling, cost, divergence, prune, scoring, select

__all__ = ["coupling", "cost", "divergence", "prune", "scoring", "select"]
