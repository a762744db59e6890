"""The torch backend: a module traced by torch.fx, run, edited and exported in torch."""

from __future__ import annotations

import functools

from ..errors import InputError
from ..ir.plan import Rewrite
from .base import Model


class TorchModel(Model):
    backend = "fx"

    def __init__(self, module, example_inputs) -> None:
        import torch

        from ..frontends import fx as fx_frontend

        if example_inputs is None:
            raise InputError("example_inputs are required for a torch module")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.example_inputs = tuple(example_inputs)
        from ..runners.torch_runner import eval_mode

        eval_mode(module)
        self.source = fx_frontend.trace(module, self.example_inputs)
        self.graph = fx_frontend.to_ir(self.source)
        self.output_shapes = [self.graph.shape(t) for t in self.graph.outputs]

    # what torch raises for a module that only runs at the batch it was traced at: a shape or
    # size mismatch (RuntimeError: view/reshape/expand/cat/matmul), a dim out of range
    # (IndexError), sizes a functional rejects (ValueError), a traced ``torch._assert``
    _BATCH_ERRORS = (RuntimeError, ValueError, IndexError, AssertionError)

    @property
    def batch_size(self) -> int:  # probed when calibration first asks (a forward pass)
        return self._batching[0]

    @property
    def exact_batch(self) -> bool:
        return self._batching[1]

    @functools.cached_property
    def _batching(self) -> tuple[int, bool]:
        return self._probe_batch()

    def _probe_batch(self, big: int = 32) -> tuple[int, bool]:
        """Calibrate in batches of ``big`` when a module traced at batch 1 runs at batch 2 with
        every output the traced shape but for a doubled leading dim; else at the example's
        batch. Only what torch raises for a batch the module does not take (``_BATCH_ERRORS``)
        means no: any other exception propagates."""
        import contextlib
        import io

        import torch

        from ..emit.validate import flatten_outputs

        first = self.example_inputs[0] if self.example_inputs else None
        own = int(first.shape[0]) if getattr(first, "ndim", 0) else 1
        if own != 1:
            return own, True
        args = tuple(torch.cat([a] * 2) if isinstance(a, torch.Tensor) and a.ndim else a
                     for a in self.example_inputs)
        try:  # fx prints the failing generated code to stderr itself; a failed probe is expected
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                outs = flatten_outputs(self.source(*args))
        except self._BATCH_ERRORS:
            return own, True
        want = [(2, *s[1:]) if s and s[0] == 1 else None for s in self.output_shapes]
        got = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in outs]
        if len(got) == len(want) and all(w is not None and g == w for g, w in zip(got, want)):
            return big, False
        return own, True

    def run(self, model, names, batches, reduce, outputs=False):
        from ..runners import torch_runner

        return torch_runner.run(model, names, self.ticking(batches), reduce, outputs)

    def get_param(self, model, name):
        from ..emit.fx import get_param

        return get_param(model, name)

    def can_add_bias(self, model, node):
        from ..emit.fx import can_add_bias

        return can_add_bias(model, node)

    def set_params(self, model, updates, new_bias):
        from ..emit.fx import set_params

        return set_params(model, updates, new_bias)

    def stepper(self, model, batches, copy: bool = True, start=None):
        import copy as _copy

        from ..runners.torch_runner import Stepper

        return Stepper(_copy.deepcopy(model) if copy else model, list(batches), start)

    def trace(self, batches, model=None):
        from ..runners.torch_runner import Trace

        return Trace(self.source if model is None else model, batches)

    steppable = True

    def apply_params(self, stepper, updates, new_bias):
        from ..emit.fx import apply_params

        apply_params(stepper.gm, updates, new_bias)

    def bypass(self, model, blocks):
        from ..emit.fx import bypass

        return bypass(model, blocks)

    def node_aliases(self):
        """The module path of every ``call_module`` node (``layer1.0.conv1``)."""
        return {n.name: [str(n.handle.target)] for n in self.graph
                if getattr(n.handle, "op", None) == "call_module"}

    def taylor(self, model, params: list[str], batches, loss=None):
        from ..runners import torch_runner

        return torch_runner.taylor_importance(model, params, batches, loss)

    def as_onnx(self, model):
        """The module exported by torch's TorchScript exporter (opset 17), for timing; a module
        traced through ``torch.export`` (transformers), which that exporter cannot put in eval
        mode, by the dynamo exporter (opset 18)."""
        import io
        import warnings as _w

        import onnx
        import torch

        from ..runners.torch_runner import eval_mode

        buf = io.BytesIO()
        with _w.catch_warnings(), torch.no_grad():
            _w.simplefilter("ignore")
            if not eval_mode(model):  # a torch.export module: TorchScript cannot take it
                prog = torch.onnx.export(model, self.example_inputs, dynamo=True,
                                         opset_version=18, verbose=False, optimize=False)
                return prog.model_proto
            torch.onnx.export(model, self.example_inputs, buf, dynamo=False, opset_version=17)
        return onnx.load_from_string(buf.getvalue())

    def emit(self, rewrite: Rewrite, mode: str = "remove"):
        from ..emit import fx as fx_emit

        return fx_emit.emit(self.source, self.graph, rewrite, mode)

    def validate(self, model) -> None:
        from ..emit.validate import check_fx

        check_fx(model, self.example_inputs, self.output_shapes)
