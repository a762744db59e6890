"""The backend interface: what compression needs from a loaded model of either kind (run it on
batches, read and set parameters, emit a rewrite, bypass blocks, validate). The torch and ONNX
adapters beside it implement it; nothing here imports torch or onnx."""

from __future__ import annotations

from typing import Any

from ..ir.graph import Graph
from ..ir.plan import Rewrite


class Model:
    """A loaded model of either backend: its IR plus the means to emit and validate."""

    backend: str
    graph: Graph
    source: Any  # fx GraphModule or normalised ModelProto

    batch_size: int = 1
    exact_batch: bool = True  # the model only takes batches of exactly ``batch_size``
    progress: Any = None  # progress(stage, done, total) after every calibration batch, or None
    notes: tuple[str, ...] | list[str] = ()  # optional loading steps that failed (warnings)

    def ticking(self, batches):
        """``batches``, reporting each one to :attr:`progress` as it has been run."""
        if self.progress is None:
            return batches
        total = len(batches) if hasattr(batches, "__len__") else None

        def each():
            for i, b in enumerate(batches):
                yield b
                self.progress("calibration", i + 1, total)

        return each()

    @staticmethod
    def tmatmul(a, b):
        """``aᵀ b`` of 2-D float32 arrays, for the normal equations of least-squares healing."""
        from ..runners.gemm import tmatmul

        return tmatmul(a, b)

    @staticmethod
    def solve(a, b):
        """``a⁻¹ b`` for a symmetric positive definite float64 ``a`` (least-squares healing's
        ridge fits)."""
        from ..runners.gemm import solve

        return solve(a, b)

    def emit(self, rewrite: Rewrite, mode: str = "remove") -> Any:
        raise NotImplementedError

    def validate(self, model: Any) -> None:
        raise NotImplementedError

    def as_onnx(self, model: Any):
        """``model`` (this backend's) as an ``onnx.ModelProto``, for onnxruntime timing."""
        return model

    def input_specs(self) -> list[tuple[str, tuple, str]]:
        """(name, shape, numpy dtype) of every model input."""
        return [(t, self.graph.shape(t), np_dtype(self.graph.tensors[t].dtype))
                for t in self.graph.inputs]

    def calibration(self, calib, seed: int = 0):
        """Calibration batches in this model's batch size, and whether they are real data.
        Built once per (calib, seed): a one-shot iterable is read only once."""
        from ..runners.data import calibration_batches, rebatch

        cache = self.__dict__.setdefault("_calibration", {})
        key = (id(calib), seed)
        if key not in cache:
            batches, real = calibration_batches(calib, self.input_specs(),
                                                n_inputs=len(self.graph.inputs), seed=seed,
                                                batch_size=self.batch_size)
            cache[key] = (calib, rebatch(batches, self.batch_size, self.exact_batch), real)
        return cache[key][1:]

    def reference(self, batches, requests: set[tuple[str, int]]):
        """Channel statistics of ``requests`` and the outputs of the original model on
        ``batches``, each computed once."""
        from ..passes.stats import ChannelStats

        stats = self.__dict__.setdefault("_ref_stats", {})
        outs = self.__dict__.setdefault("_ref_outputs", {})
        skey, okey = (id(batches), frozenset(requests)), id(batches)
        if not requests and okey in outs:  # outputs alone: no statistics to gather
            stats.setdefault(skey, ChannelStats(set()))
        if skey not in stats or okey not in outs:
            red = ChannelStats(set(requests))
            got = self.run(self.source, red.tensors, batches, red, outputs=okey not in outs)
            stats[skey] = red
            outs.setdefault(okey, got)
        return stats[skey], outs[okey]

    def output_error(self, batches):
        """``error(model)``: ‖N₀ − N‖² / ‖N₀‖² of a variant of this model on ``batches``."""
        _, ref_out = self.reference(batches, set())

        def error(model) -> float:
            return self.error_of(batches, self.run(model, [], batches, None, outputs=True))

        return error

    def error_of(self, batches, outputs) -> float:
        """‖N₀ − N‖² / ‖N₀‖² of ``outputs`` (per batch, a list of arrays) on ``batches``."""
        from ..passes.heal import OutputError

        _, ref_out = self.reference(batches, set())
        e = OutputError()
        for r, o in zip(ref_out, outputs):
            e.add(r, o)
        return e.value

    def run(self, model: Any, names: list[str], batches, reduce, outputs: bool = False):
        """Run ``model`` (this one, or an emitted variant of it) on ``batches``."""
        raise NotImplementedError

    def get_param(self, model: Any, name: str):
        raise NotImplementedError

    def can_add_bias(self, model: Any, node: str) -> bool:
        raise NotImplementedError

    def set_params(self, model: Any, updates: dict, new_bias: dict) -> Any:
        raise NotImplementedError

    def bypass(self, model: Any, blocks: list[tuple[str, str, Any]]) -> Any:
        raise NotImplementedError

    def check_runnable(self) -> None:
        """Refuse a model the backend cannot run (nothing to check for torch)."""

    def node_aliases(self) -> dict[str, list[str]]:
        """Other names of IR nodes that ``keep`` patterns may use (none by default)."""
        return {}

    def stepper(self, model: Any, batches, copy: bool = True, start=None):
        """``model`` run step by step over all of ``batches`` at once (``advance_to(tensor)``
        -> its value per batch; :meth:`apply_params` changes parameters in between), on a copy
        of it unless ``copy`` is false; None where the backend cannot (then healing runs the
        whole model once per refitted layer). ``start``: one of the pair :meth:`trace`'s
        ``start`` gives, to begin there rather than at the inputs."""
        return None

    def trace(self, batches, model: Any = None):
        """``model`` (default: the original) stepped once over ``batches`` for probes of its
        variants: ``trace.start(variant)`` -> (start of the variant, start of ``model``) at their
        first difference, for :meth:`stepper`, or None. None where the backend has none (ONNX)."""
        return None

    def probe_error(self, model: Any, batches, trace=None) -> float:
        """``output_error(batches)(model)``, with ``model`` run only from where it departs from
        ``trace``'s model (:meth:`trace`) where it can be."""
        start = trace.start(model) if trace is not None else None
        if start is not None:
            try:
                step = self.stepper(model, batches, copy=False, start=start[0])
            except KeyError:  # a value needed later was not kept where the trace is
                step = None
            if step is not None:
                return self.error_of(batches, step.results())
        return self.output_error(batches)(model)

    @property
    def steppable(self) -> bool:
        """Whether :meth:`stepper` gives a stepper for this model."""
        return False

    def apply_params(self, stepper, updates: dict, new_bias: dict) -> None:
        """:meth:`set_params` on the model a :meth:`stepper` runs, in place."""
        raise NotImplementedError

    def stamp(self, model: Any, key: str, value) -> None:
        """Record ``value`` (JSON) in ``model``'s metadata under ``key``, where the format has
        any (ONNX ``metadata_props``; nothing for torch)."""

    def timing_onnx(self, model: Any, dims: dict | None = None):
        """``model`` as the ``onnx.ModelProto`` latency is timed on: :meth:`as_onnx` with the
        symbolic input dims ``dims`` (name -> size) fixed."""
        from ..frontends import onnx_dims

        return onnx_dims.fixed(self.as_onnx(model), dims)


def np_dtype(dtype: str) -> str:
    d = dtype.replace("torch.", "")
    return {"float": "float32", "bool": "bool_", "": "float32"}.get(d, d)
