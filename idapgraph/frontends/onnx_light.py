"""Shape inference without the weights' bytes.

``onnx.shape_inference`` and onnxruntime's symbolic inference serialise the whole model to C++
and parse it back, weights included: on ResNet-50 (100 MB) that is most of the time analysis
takes. Inference needs only the weights' types and shapes, plus the values of small integer
tensors (shape arithmetic, with ``data_prop``). :func:`split` gives a light copy whose large
initializers are graph inputs of the same type and shape, and a function that puts the
inferred types back onto the full model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from .onnx_external import uses_external_data

LARGE = 1024  # elements: shape and index tensors stay initializers (data propagation reads them)


def _large(t: onnx.TensorProto) -> bool:
    return math.prod(t.dims) > LARGE and not uses_external_data(t)


def split(model: onnx.ModelProto) -> tuple[onnx.ModelProto,
                                           Callable[[onnx.ModelProto], onnx.ModelProto]]:
    """(light model, ``restore``): ``restore(inferred light model)`` is ``model`` with the
    inferred value types and output types: a copy, or ``model`` itself with ``in_place=True``
    (a model the caller owns; saves a copy of the weights)."""
    heavy = {t.name for t in model.graph.initializer if _large(t)}
    if not heavy:
        return model, lambda inferred, in_place=False: inferred
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    g.initializer.extend(t for t in src.initializer if t.name not in heavy)
    declared = {i.name for i in src.input}
    added = [t.name for t in src.initializer if t.name in heavy and t.name not in declared]
    g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in src.initializer if t.name in heavy and t.name not in declared)

    def restore(inferred: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
        out = model
        if not in_place:
            out = onnx.ModelProto()
            out.CopyFrom(model)
        got = inferred.graph
        for field in ("value_info", "output"):
            out.graph.ClearField(field)
            getattr(out.graph, field).extend(getattr(got, field))
        gone = set(added)
        out.graph.ClearField("input")
        out.graph.input.extend(i for i in got.input if i.name not in gone)
        return out

    return light, restore
