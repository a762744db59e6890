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


def stepper(model: onnx.ModelProto, batches: Batches,
            outputs: list[str] | None = None) -> OnnxStepper | None:
    """An :class:`OnnxStepper` of ``model`` whose :meth:`~OnnxStepper.results` are the values of
    ``outputs`` (default: the graph's outputs), or None where cutting it is not safe."""
    from ..frontends import onnx_external

    if onnx_external.uses_external(model) or model.functions:
        return None
    return OnnxStepper(model, batches, outputs)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
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
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types = {vi.name: vi.type.tensor_type.elem_type
                      for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
                      + list(inferred.graph.output)}
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

    def _todo(self) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if not all(o in self.done for o in n.output if o)]

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
        used = {i for n in segment for i in self.reads[id(n)]}
        inits = [t for t in self.model.graph.initializer if t.name in used]

        def info(n, elem):
            return onnx.helper.make_tensor_value_info(n, elem, None)

        fed = [info(f, onnx.helper.np_dtype_to_tensor_dtype(self.live[f][0].dtype))
               for f in feeds]
        made = [info(k, self.types.get(k, onnx.TensorProto.FLOAT)) for k in keep]
        graph = onnx.helper.make_graph(segment, "segment", fed, made, inits)
        return onnx.helper.make_model(graph, opset_imports=self.model.opset_import,
                                      ir_version=self.model.ir_version)


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
