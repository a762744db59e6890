"""An ONNX model run step by step over all calibration batches at once, by graph segments:
:meth:`OnnxStepper.advance_to` runs, as one small onnxruntime model, the nodes not run yet up to
the one that makes a tensor, fed by the values live at the cut (graph inputs and earlier
segments' outputs that later nodes still read). Parameters may change between steps
(:meth:`OnnxStepper.set_model`): later segments are cut from the new model. A node with
subgraphs (If, Loop, Scan) reads, besides its inputs, the outer names its subgraphs use: the
cut counts them as its inputs, so a segment holding it is fed (or given the initializers) they
name. Models it cannot cut safely (external data, model-local functions) are refused with None
by :func:`stepper`, and the caller runs whole models instead."""

from __future__ import annotations

import numpy as np
import onnx

from .data import Batches


# onnxruntime 1.32 creates a session in a time that grows with the square of the graph's
# initializer count (unoptimised: 0.4 s for 12k initializers, 13 s for 62k); a model with more
# than this many is run as segments of about this many (:func:`run_large`)
SEGMENT_INITIALIZERS = 5000


def run_large(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
              limit: int | None = None) -> list[np.ndarray] | None:
    """The outputs of ``model`` on ``feeds`` (one batch), every node run by onnxruntime, as
    consecutive segments of the node list holding about ``limit`` initializers each (default
    :data:`SEGMENT_INITIALIZERS`) where the model holds more; None where it holds fewer or
    cannot be cut (external data, local functions, an output no node makes): the caller then
    runs it whole. Linear in the graph: each segment is fed the live values it reads and
    keeps what a later segment or the outputs read."""
    from ..emit.validate import session
    from ..frontends import onnx_external

    limit = limit or SEGMENT_INITIALIZERS
    g = model.graph
    if len(g.initializer) <= limit or onnx_external.uses_external(model) or model.functions:
        return None
    nodes, outputs = list(g.node), [o.name for o in g.output]
    read = [reads(n) for n in nodes]
    last = {t: i for i, r in enumerate(read) for t in r}  # the last node reading each name
    last.update(dict.fromkeys(outputs, len(nodes)))
    if not set(outputs) <= {o for n in nodes for o in n.output}:
        return None
    inits, types, live = {t.name: t for t in g.initializer}, _elem_types(model), dict(feeds)
    for lo, hi in _chunks(read, inits, limit):
        made = [o for n in nodes[lo:hi] for o in n.output if o]
        keep = [o for o in made if last.get(o, -1) >= hi]
        fed = sorted({t for r in read[lo:hi] for t in r if t in live})
        used = dict.fromkeys(t for r in read[lo:hi] for t in r if t in inits)
        seg = _segment(model, nodes[lo:hi], {f: live[f].dtype for f in fed},
                       {k: types.get(k, onnx.TensorProto.FLOAT) for k in keep},
                       [inits[t] for t in used])
        live.update(zip(keep, session(seg, optimize=False).run(keep, {f: live[f] for f in fed})))
        for t in [t for t in live if last.get(t, -1) < hi]:
            del live[t]
    return [live[o] for o in outputs]


def _chunks(read: list[list[str]], inits, limit: int) -> list[tuple[int, int]]:
    """Consecutive node ranges ``[lo, hi)`` that first read about ``limit`` initializers each."""
    seen: set[str] = set()
    cuts, count, lo = [], 0, 0
    for i, r in enumerate(read):
        new = {t for t in r if t in inits} - seen
        seen |= new
        count += len(new)
        if count >= limit:
            cuts.append((lo, i + 1))
            lo, count = i + 1, 0
    if lo < len(read):
        cuts.append((lo, len(read)))
    return cuts


def _segment(model: onnx.ModelProto, nodes, fed: dict[str, np.dtype], made: dict[str, int],
             inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A model of ``nodes`` fed the names of ``fed`` (by numpy dtype), giving the names of
    ``made`` (by ONNX element type), holding ``inits``."""
    def info(n, elem):
        return onnx.helper.make_tensor_value_info(n, elem, None)

    graph = onnx.helper.make_graph(
        nodes, "segment", [info(f, onnx.helper.np_dtype_to_tensor_dtype(d)) for f, d in fed.items()],
        [info(k, e) for k, e in made.items()], inits)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import,
                                  ir_version=model.ir_version)


def stepper(model: onnx.ModelProto, batches: Batches,
            outputs: list[str] | None = None) -> OnnxStepper | None:
    """An :class:`OnnxStepper` of ``model`` whose :meth:`~OnnxStepper.results` are the values of
    ``outputs`` (default: the graph's outputs), or None where cutting it is not safe."""
    return OnnxStepper(model, batches, outputs) if steppable(model) else None


def steppable(model: onnx.ModelProto) -> bool:
    """Whether ``model`` can be cut into steps: weights in memory, no local functions."""
    from ..frontends import onnx_external

    return not (onnx_external.uses_external(model) or model.functions)


# standard ops with graph attributes (a custom-domain op may have them too)
_CONTROL_FLOW = {"If", "Loop", "Scan"}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    if node.domain in ("", "ai.onnx") and node.op_type not in _CONTROL_FLOW:
        return []
    return [g for a in node.attribute for g in (
        [a.g] if a.type == onnx.AttributeProto.GRAPH else
        list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])]


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (a subgraph) reads from the scopes around it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer} | {o for n in graph.node for o in n.output}
    used: set[str] = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for sub in _subgraphs(n):
            used |= _outer_names(sub)
    return used - defined


def reads(node: onnx.NodeProto) -> list[str]:
    """Every name ``node`` reads: its inputs, then the outer names its subgraphs use."""
    explicit = [i for i in node.input if i]
    implicit = set().union(*(_outer_names(g) for g in _subgraphs(node))) - set(explicit)
    return explicit + sorted(implicit)


class OnnxStepper:
    def __init__(self, model: onnx.ModelProto, batches: Batches,
                 outputs: list[str] | None = None) -> None:
        self.wanted = list(outputs or [])
        self.types = _elem_types(model)
        names = [i.name for i in model.graph.input
                 if i.name not in {t.name for t in model.graph.initializer}]
        self.live: dict[str, list[np.ndarray]] = {
            n: [np.asarray(b[k]) for b in batches] for k, n in enumerate(names)}
        self.done: set[str] = set(names)
        self.n_batches = len(batches)
        self.set_model(model)

    def set_model(self, model: onnx.ModelProto) -> None:
        """Run the rest with ``model`` (the same graph, parameters changed or biases added)."""
        self.model = model
        self.outputs = self.wanted or [o.name for o in model.graph.output]
        self.nodes = list(model.graph.node)  # held, so the ``id`` keys below stay theirs
        self.reads = {id(n): reads(n) for n in self.nodes}
        self.pending = self.nodes
        self.inits = {t.name: t for t in model.graph.initializer}

    def _todo(self) -> list[onnx.NodeProto]:
        """The nodes not run yet (kept for the next call: each call scans only those)."""
        self.pending = [n for n in self.pending if not all(o in self.done for o in n.output if o)]
        return self.pending

    def advance_to(self, name: str) -> list[np.ndarray]:
        """Run up to tensor ``name``; its value in every batch."""
        if name not in self.done:
            todo = self._todo()
            # only those: a layer not yet refitted must not run
            need = _ancestors(todo, name, self.reads)
            self._run([n for i, n in enumerate(todo) if i in need],
                      [n for i, n in enumerate(todo) if i not in need], name)
        if name not in self.live:
            raise RuntimeError(f"{name} was computed and dropped before it was asked for")
        return [np.asarray(v, dtype=np.float32) for v in self.live[name]]

    def held(self, name: str) -> bool:
        """Whether ``name`` is computed already and still held."""
        return name in self.live

    def results(self) -> list[list[np.ndarray]]:
        """Run to the end: the model's outputs per batch."""
        todo = self._todo()
        need = set().union(*(_ancestors(todo, o, self.reads) for o in self.outputs))
        if need:  # only what the outputs need (the probes of a detector: not its NMS heads)
            self._run([n for i, n in enumerate(todo) if i in need],
                      [n for i, n in enumerate(todo) if i not in need], None)
        return [list(vals) for vals in zip(*(self.live[o] for o in self.outputs))]

    def _run(self, segment: list[onnx.NodeProto], rest: list[onnx.NodeProto], want) -> None:
        from ..emit.validate import session

        made = [o for n in segment for o in n.output if o]
        later = {i for n in rest for i in self.reads[id(n)]} | set(self.outputs)
        keep = [o for o in made if o in later or o == want]
        feeds = sorted({i for n in segment for i in self.reads[id(n)] if i in self.live})
        sess = session(self._model(segment, feeds, keep), optimize=False)
        got = [sess.run(keep, {f: self.live[f][b] for f in feeds}) for b in range(self.n_batches)]
        self.done |= set(made)
        for j, o in enumerate(keep):
            self.live[o] = [g[j] for g in got]
        for t in list(self.live):
            if t not in later and t != want:
                del self.live[t]

    def _model(self, segment, feeds: list[str], keep: list[str]) -> onnx.ModelProto:
        used = dict.fromkeys(i for n in segment for i in self.reads[id(n)] if i in self.inits)
        return _segment(self.model, segment, {f: self.live[f][0].dtype for f in feeds},
                        {k: self.types.get(k, onnx.TensorProto.FLOAT) for k in keep},
                        [self.inits[i] for i in used])


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: from the model's own value infos where they cover every
    node output (an emitted or normalised model: inferred already), else inferred (on a copy
    without the weights' bytes)."""
    def types(g):
        return {vi.name: vi.type.tensor_type.elem_type
                for vi in [*g.value_info, *g.input, *g.output]}

    known = types(model.graph)
    if all(o in known for n in model.graph.node for o in n.output if o):
        return known
    from ..frontends import onnx_light

    return types(onnx.shape_inference.infer_shapes(onnx_light.split(model)[0]).graph)


def _ancestors(nodes: list[onnx.NodeProto], name: str, read: dict[int, list[str]]) -> set[int]:
    """Indices of the nodes of ``nodes`` that ``name`` is computed from (itself included);
    ``read``: every name a node reads, by ``id`` (:func:`reads`)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    need, stack = set(), [name]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in need:
            need.add(i)
            stack.extend(read[id(nodes[i])])
    return need
