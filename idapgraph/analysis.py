"""``analyze``: load a model through its backend and annotate its graph (coupled channel groups,
cost, bypassable blocks, and with calibration data the IDAP++ divergence)."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import asdict, dataclass, replace
from typing import Any

from .backends import Model, load
from .errors import InputError
from .frontends import onnx_dims
from .ir.annotations import Coupling
from .ir.graph import Graph
from .passes import blocks as blocks_pass
from .passes import coupling as coupling_pass
from .passes import cost as cost_pass
from .passes import divergence
from .passes import keep as keep_pass
from .passes.cost import Cost


@dataclass
class Analysis:
    model: Model
    coupling: Coupling
    cost: Cost
    divergence: dict[str, Any] | None = None  # layer -> δ per output channel (with calib)
    group_scores: dict[str, Any] | None = None  # group key -> idap unit scores (with calib)
    calibration: str = "none"

    @property
    def blocks(self) -> list:
        """Bypassable blocks (:class:`idapgraph.passes.blocks.Block`), found on first use."""
        if "_blocks" not in self.__dict__:
            self.__dict__["_blocks"] = blocks_pass.find(self.graph)
        return self.__dict__["_blocks"]

    @property
    def graph(self) -> Graph:
        return self.model.graph

    @property
    def warnings(self) -> list[str]:
        """Loading steps that failed and were skipped (the analysis may be less sharp)."""
        return list(self.model.notes)

    def to_dict(self) -> dict[str, Any]:
        """The analysis as JSON data (what ``idapgraph analyze --json`` prints): size, op counts,
        channel groups (with score ranges when scored), frozen spots, blocks, per-node cost,
        divergence per layer when measured, and the loading warnings."""
        g, cost = self.graph, self.cost
        groups = [{"key": gr.key, "units": gr.n_units,
                   "params": sorted({s.tensor for s in gr.params(g)}),
                   "unit_width": {str(m.spaces[0].tensor): int(m.index.shape[1])
                                  for m in gr.members}}
                  for gr in self.coupling.groups]
        for gr in groups if self.group_scores is not None else ():
            sc = self.group_scores[gr["key"]]
            gr["score"] = {"min": float(sc.min()), "mean": float(sc.mean()), "max": float(sc.max())}
        rep = {"backend": g.backend, "nodes": len(g), "flops": cost.flops, "params": cost.params,
               "ops": g.summary(), "groups": groups,
               "frozen": [asdict(f) for f in self.coupling.frozen],
               "blocks": [{"key": b.key, "kind": b.kind, "add": b.add, "nodes": len(b.nodes),
                           "flops": sum(cost.per_node.get(n, 0) for n in b.nodes)}
                          for b in self.blocks],
               "cost": [{"node": n.name, "op": n.op, "source": n.source,
                         "flops": cost.per_node.get(n.name, 0)} for n in g],
               "calibration": self.calibration, "warnings": self.warnings}
        if self.divergence is not None:
            rep["divergence"] = {k: [float(x) for x in v] for k, v in self.divergence.items()}
        return rep


@contextlib.contextmanager
def gc_paused():
    """Loading and coupling build ~10^6 small objects that hold no garbage cycles; the cyclic
    collector's repeated full passes over them made analysis time grow faster than the graph
    (measured: 5.4x the time for 4x the nodes with it, 4.7x without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def analyze(model, example_inputs=None, *, calib=None, divergence_scores: bool = False,
            seed: int = 0) -> Analysis:
    """Trace/load ``model`` and run coupling and cost analysis; with ``calib`` (or
    ``divergence_scores=True``, then on seeded random inputs) also the IDAP++ divergence
    annotation: δ per output channel of every weighted layer and per unit of every group."""
    with gc_paused():
        m = load(model, example_inputs)
        a = Analysis(m, coupling_pass.analyze(m.graph), cost_pass.count(m.graph))
    if calib is not None or divergence_scores:
        batches, real = m.calibration(calib, seed)
        a.calibration = "data" if real else "random"
        used, norms = divergence.requests(a.graph, a.coupling)
        m.run(m.source, norms.tensors, batches, norms)
        scores, per_node = divergence.scores(a.graph, a.coupling, used, norms)
        a.divergence = per_node
        a.group_scores = {g.key: s for g, s in zip(a.coupling.groups, scores)}
    return a


def timing_analysis(a: Analysis, dims, keep_nodes=frozenset()) -> Analysis:
    """The analysis latency is modelled and timed on: ``a`` itself without ``dims``; with them
    (symbolic dim name -> size, ONNX only) the analysis of ``a``'s model with those dims fixed,
    which must find every channel group (same key, same units) and block of ``a``, and keeps
    only those (``keep_nodes`` protected alike). Fixed sizes can let it find more: a dynamo
    export of BERT with its sequence fixed also offers groups on sliced position-id
    constants."""
    if not dims:
        return a
    if a.graph.backend != "onnx":
        raise InputError("dims fixes symbolic dims of an ONNX model's inputs; a torch module is "
                         "traced at the shapes of its example inputs")
    dims = onnx_dims.check(a.model.source, dict(dims))
    t = analyze(onnx_dims.fixed(a.model.source, dims))
    if keep_nodes:
        t.coupling = keep_pass.protect(t.graph, t.coupling, set(keep_nodes))
    groups = {g.key: g for g in t.coupling.groups}
    if any(g.key not in groups or groups[g.key].n_units != g.n_units for g in a.coupling.groups) \
            or not {b.key for b in a.blocks} <= {b.key for b in t.blocks}:
        raise InputError(f"dims: with {dims} fixed the model's channel groups or blocks differ "
                         "from those with its dims symbolic; drop dims to time it at size 1")
    t.coupling = replace(t.coupling, groups=[groups[g.key] for g in a.coupling.groups])
    keys = {b.key for b in a.blocks}
    t.__dict__["_blocks"] = [b for b in t.blocks if b.key in keys]
    return t
