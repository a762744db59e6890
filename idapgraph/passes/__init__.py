"""Analysis and rewrite passes. Each is a plain function over the IR (no torch, no onnx):

* ``coupling.analyze(graph) -> Coupling``
* ``cost.count(graph, shape=None) -> Cost``
* ``scoring.score(method, graph, coupling, seed) -> list[np.ndarray]``
* ``select.select(graph, coupling, scores, flops=, params=) -> Selection``
* ``prune.resolve(graph, coupling, plan) -> Rewrite``
"""

from . import coupling, cost, prune, scoring, select

__all__ = ["coupling", "cost", "prune", "scoring", "select"]
