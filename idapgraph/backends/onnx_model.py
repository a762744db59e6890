"""The ONNX backend: a model normalised by the ONNX frontend, run in onnxruntime and edited as a
``ModelProto``."""

from __future__ import annotations

import json
import os

from ..errors import InputError
from ..ir.plan import Rewrite
from .base import Model


class OnnxModel(Model):
    backend = "onnx"

    def __init__(self, model) -> None:
        from ..frontends import onnx as onnx_frontend
        from ..frontends import onnx_file

        if isinstance(model, (str, os.PathLike)):
            self.path = os.fspath(model)
            model = onnx_file.load(model)
        else:
            self.path = None
            from ..frontends.onnx_external import external_tensors

            if any(not os.path.isabs(e.value) for t in external_tensors(model)
                   for e in t.external_data if e.key == "location"):
                raise InputError("this ModelProto refers to external data files: pass the "
                                 "model's path instead (its data is then read from its folder)")
        self.original = model
        self.notes = []
        self.source = onnx_frontend.normalize(model, self.notes)
        onnx_frontend.check_runnable(self.source)
        self.graph = onnx_frontend.to_ir(self.source)
        self.output_shapes = None
        dims = {self.graph.shape(t)[0] for t in self.graph.inputs if self.graph.shape(t)}
        static = len(dims) == 1 and None not in dims
        self.batch_size = dims.pop() if static else 8
        self.exact_batch = static
        self.probes = probes(self.source, self.graph)

    def run(self, model, names, batches, reduce, outputs=False):
        from ..runners import onnx_runner

        if not (outputs and self.probes):
            return onnx_runner.run(model, names, self.ticking(batches), reduce, outputs)
        got = []  # the probes stand in for the outputs (see :func:`probes`)

        def both(values):
            got.append([values[p] for p in self.probes])
            if reduce is not None:
                reduce({n: v for n, v in values.items() if n in names})

        onnx_runner.run(model, list(dict.fromkeys([*names, *self.probes])),
                        self.ticking(batches), both)
        return got

    def get_param(self, model, name):
        from ..emit.onnx import get_param

        return get_param(model, name)

    def can_add_bias(self, model, node):
        from ..emit.onnx import can_add_bias

        return can_add_bias(self.graph, node)

    def set_params(self, model, updates, new_bias):
        from ..emit.onnx import set_params

        return set_params(model, self.graph, updates, new_bias)

    def stepper(self, model, batches, copy: bool = True, start=None):
        from ..runners.onnx_stepper import stepper

        # never edits ``model`` (set_params makes new ones)
        return stepper(model, batches, self.probes)

    @property
    def steppable(self) -> bool:
        from ..runners.onnx_stepper import steppable

        return steppable(self.source)

    def apply_params(self, stepper, updates, new_bias):
        stepper.set_model(self.set_params(stepper.model, updates, new_bias))

    def bypass(self, model, blocks):
        from ..emit.onnx import bypass

        return bypass(model, blocks)

    def emit(self, rewrite: Rewrite, mode: str = "remove"):
        from ..emit import onnx as onnx_emit

        return onnx_emit.emit(self.source, self.graph, rewrite, mode)

    def check_runnable(self) -> None:
        """Refuse (bad input) a model onnxruntime cannot run: its outputs could not be checked."""
        from ..runners.ort_ops import check_runnable

        check_runnable(self.original)

    def validate(self, model) -> None:
        """``model`` passes the ONNX checker and runs in onnxruntime with the source's output
        shapes. Those are the ones shape inference gave the source (its IR) when the run
        matches them; only otherwise is the source run too (once), to tell a wrong inference
        from a changed output: a second onnxruntime session on a graph of the same size."""
        from ..emit.validate import check_onnx, check_shapes, example_feeds, run_unoptimised
        from ..runners.onnx_stepper import run_large

        got = check_onnx(model, run_large=run_large)
        inferred = [self.graph.shape(t) for t in self.graph.outputs]
        if all(s is not None and None not in s for s in inferred) and \
                got == [tuple(s) for s in inferred]:
            return
        if self.output_shapes is None:
            self.output_shapes = [o.shape for o in run_unoptimised(
                self.source, example_feeds(self.source), run_large)]
        # outputs whose sizes depend on the data (after NMS): those axes may differ
        free = [tuple(d is None for d in s) if s is not None else None for s in inferred] \
            if self.probes else None
        if free is not None and any(f is None for f in free):
            free = [f if f is not None else (True,) * len(g) for f, g in zip(free, got)]
        check_shapes(got, self.output_shapes, free)

    def stamp(self, model, key: str, value) -> None:
        """Record ``value`` (JSON) in ``model.metadata_props`` under ``key`` (replacing an earlier
        entry): how ``diff`` learns what healing did to each layer."""
        for p in list(model.metadata_props):
            if p.key == key:
                model.metadata_props.remove(p)
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)


def probes(model, graph) -> list[str]:
    """Where a model with static inputs has outputs whose sizes depend on values (a detector's
    boxes after NMS: a different count from each variant, so no error between them), the
    tensors every output error is measured on instead: the float activations of static shape
    that nodes with outputs of unknown size read (Faster R-CNN: the FPN features RoIAlign reads,
    the decoded proposals and scores before NMS). Empty for every other model."""
    from ..ir.graph import ACTIVATION

    def static(t):
        s = graph.shape(t)
        return s is not None and all(isinstance(d, int) for d in s)

    declared = [[d.dim_value if d.HasField("dim_value") else None
                 for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    if not all(static(t) for t in graph.inputs) or all(
            None not in d for d in declared if d):
        return []
    found = []
    for node in graph:
        if all(static(t) for t in node.outputs):
            continue
        found += [t for t in node.present_inputs() if t not in graph.inputs and static(t)
                  and graph.tensors[t].kind == ACTIVATION
                  and graph.tensors[t].dtype in ("float16", "float32", "float64")]
    return list(dict.fromkeys(found))


def onnx_proto(model, refusal: str = "latency is measured on ONNX models (a path or an "
                                     "onnx.ModelProto)"):
    """``model`` (a path or an ``onnx.ModelProto``) as a ``ModelProto``; anything else is refused
    with ``refusal``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        from ..frontends import onnx_file

        model = onnx_file.load(model)
    if not isinstance(model, onnx.ModelProto):
        raise InputError(refusal)
    return model
