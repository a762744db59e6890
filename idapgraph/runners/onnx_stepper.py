"""An ONNX model run step by step over all calibration batches at once, by graph segments:
:meth:`OnnxStepper.advance_to` runs, as one small onnxruntime model, the nodes not run yet up to
the one that makes a tensor, fed by the values live at the cut (graph inputs and earlier
segments' outputs that later nodes still read). Parameters may change between steps
(:meth:`OnnxStepper.set_model`): later segments are cut from the new model. Models it cannot
cut safely (subgraphs, which read outer names; external data) are refused with None by
:func:`stepper`, and the caller runs whole models instead."""

from __future__ import annotations

import numpy as np
import onnx

from .data import Batches


def stepper(model: onnx.ModelProto, batches: Batches) -> OnnxStepper | None:
    """An :class:`OnnxStepper` of ``model``, or None where cutting it is not safe."""
    from ..frontends import onnx_external

    if onnx_external.uses_external(model) or model.functions or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for n in model.graph.node for a in n.attribute):
        return None
    return OnnxStepper(model, batches)


class OnnxStepper:
    def __init__(self, model: onnx.ModelProto, batches: Batches) -> None:
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
        self.outputs = [o.name for o in model.graph.output]

    def _todo(self) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if not all(o in self.done for o in n.output if o)]

    def advance_to(self, name: str) -> list[np.ndarray]:
        """Run up to tensor ``name``; its value in every batch."""
        if name not in self.done:
            todo = self._todo()
            need = _ancestors(todo, name)  # only those: a layer not yet refitted must not run
            self._run([n for i, n in enumerate(todo) if i in need],
                      [n for i, n in enumerate(todo) if i not in need], name)
        if name not in self.live:
            raise RuntimeError(f"{name} was computed and dropped before it was asked for")
        return [np.asarray(v, dtype=np.float32) for v in self.live[name]]

    def results(self) -> list[list[np.ndarray]]:
        """Run to the end: the model's outputs per batch."""
        todo = self._todo()
        if todo:
            self._run(todo, [], None)
        return [list(vals) for vals in zip(*(self.live[o] for o in self.outputs))]

    def _run(self, segment: list[onnx.NodeProto], rest: list[onnx.NodeProto], want) -> None:
        from ..emit.validate import session

        made = [o for n in segment for o in n.output if o]
        later = {i for n in rest for i in n.input} | set(self.outputs)
        keep = [o for o in made if o in later or o == want]
        feeds = sorted({i for n in segment for i in n.input if i in self.live})
        sess = session(self._model(segment, feeds, keep), optimize=False)
        got = [sess.run(keep, {f: self.live[f][b] for f in feeds}) for b in range(self.n_batches)]
        self.done |= set(made)
        for j, o in enumerate(keep):
            self.live[o] = [g[j] for g in got]
        for t in list(self.live):
            if t not in later and t != want:
                del self.live[t]

    def _model(self, segment, feeds: list[str], keep: list[str]) -> onnx.ModelProto:
        used = {i for n in segment for i in n.input}
        inits = [t for t in self.model.graph.initializer if t.name in used]

        def info(n, elem):
            return onnx.helper.make_tensor_value_info(n, elem, None)

        fed = [info(f, onnx.helper.np_dtype_to_tensor_dtype(self.live[f][0].dtype))
               for f in feeds]
        made = [info(k, self.types.get(k, onnx.TensorProto.FLOAT)) for k in keep]
        graph = onnx.helper.make_graph(segment, "segment", fed, made, inits)
        return onnx.helper.make_model(graph, opset_imports=self.model.opset_import,
                                      ir_version=self.model.ir_version)


def _ancestors(nodes: list[onnx.NodeProto], name: str) -> set[int]:
    """Indices of the nodes of ``nodes`` that ``name`` is computed from (itself included)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    need, stack = set(), [name]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in need:
            need.add(i)
            stack.extend(nodes[i].input)
    return need
