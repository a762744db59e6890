"""The options of ``compress``, one typed object shared by the Python API and the CLI, checked
once (:meth:`CompressOptions.validated`) before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from .errors import InputError
from .ir.plan import Plan
from .passes import scoring
from .passes.blocks import BLOCK_KINDS

HEAL_MODES = ("none", "bias", "stats", "lsq", "bn")
BLOCK_SCORES = ("relative", "influence", "measured")
SOLVERS = ("milp", "greedy")
ORDERS = ("auto", "obs", "scores")


@dataclass
class CompressOptions:
    """Every knob of :func:`idapgraph.compress` (see its docstring for what each does)."""

    flops: float | None = None  # fraction of the FLOPs to keep
    params: float | None = None  # fraction of the parameters to keep
    method: str = "idap"  # unit scores: idap, magnitude, taylor, random
    calib: Any = None  # calibration data (tensors, a DataLoader, a dict, an .npz path)
    seed: int = 0
    plan: Plan | None = None  # apply this plan instead of selecting one
    min_keep: float = 0.1  # share of every group's units always kept
    steps: int = 10  # idap's iterative schedule: p_t = base·(1 + t/steps)^alpha
    alpha: float = 1.5
    base: float = 1.0
    loss: Callable | None = None  # taylor: loss(outputs, inputs)
    heal: str = "lsq"  # none, bias, stats, lsq
    blocks: int | None = 0  # stage 2: blocks to bypass (None: as many as max_error allows)
    max_error: float | None = None  # bound on the calibration output error
    block_score: str = "relative"  # relative, influence or measured
    block_kinds: Any = None  # residual, attention, mlp, layer (default all)
    round_to: int | None = None  # every pruned group keeps a multiple of this many units
    # (None: of 8 channels, kernel-friendly; 1: exact counts)
    keep: Any = None  # node-name patterns never pruned
    progress: Callable | None = None  # progress(stage, step, total)
    finetune: Callable | None = None  # finetune(student, teacher), torch
    evaluate: Callable | None = None  # evaluate(model) -> float, per pipeline step
    finetune_steps: int = 3
    latency: float | None = None  # fraction of the measured latency to keep
    threads: int = 1  # onnxruntime intra-op threads latency is measured with
    block_gates: bool = True  # latency=R may bypass blocks
    solver: str = "milp"  # milp or greedy
    provider: str = "cpu"  # cpu or cuda
    dims: dict | None = None  # symbolic dim name -> size latency is timed at
    measure_groups: bool | None = None  # groups weighed by measured losses (None: for
    # FLOPs/params targets of a model the backend runs step by step, see stages.prepare)
    order: str | None = None  # which units of a group the measured allocation removes first:
    # obs (least reconstruction error), scores, or auto: obs where convolutions alone read the
    # group (None: auto for method idap, else scores)

    @classmethod
    def of(cls, options: CompressOptions | None = None, **overrides) -> CompressOptions:
        """``options`` (default all defaults) with ``overrides``; an unknown name is refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown compress option(s) {unknown}")
        return replace(options or cls(), **overrides)

    def validated(self) -> CompressOptions:
        """A checked, normalised copy (keep and block_kinds as lists, the provider resolved):
        one clear :class:`InputError` for the first bad option."""
        from .runners.providers import resolve

        for name in ("flops", "params", "latency"):
            check_ratio(name, getattr(self, name))
        self._check_latency()
        self._check_choices()
        self._check_numbers()
        if self.finetune is not None or self.evaluate is not None:
            if self.plan is not None:
                raise InputError("a given plan is applied in one step: it cannot be fine-tuned "
                                 "step by step (drop plan= or finetune=/evaluate=)")
        kinds = self.block_kinds
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            bad = [k for k in kinds if k not in BLOCK_KINDS]
            if bad:
                raise InputError(f"unknown block kind(s) {bad} (choose from "
                                 f"{', '.join(BLOCK_KINDS)})")
        keep = [self.keep] if isinstance(self.keep, str) else list(self.keep or [])
        return replace(self, provider=resolve(self.provider), block_kinds=kinds, keep=keep)

    @property
    def target(self) -> dict[str, float | None]:
        """The targets as the report and the plan record them."""
        return {"flops": self.flops, "params": self.params,
                **({"latency": self.latency} if self.latency else {})}

    @property
    def stage2(self) -> bool:
        """Whether stage 2 (block truncation) chooses blocks of its own."""
        return self.latency is None and ((self.blocks or 0) > 0
                                         or (self.blocks is None and self.max_error is not None))

    def _check_latency(self) -> None:
        if self.latency is not None:
            if self.flops is not None or self.params is not None or self.plan is not None:
                raise InputError("latency= is a target of its own: drop flops=/params=/plan=")
            if self.finetune is not None or self.evaluate is not None:
                raise InputError("latency= does not combine with finetune=/evaluate= yet")
            if self.blocks:
                raise InputError("latency= chooses the blocks it bypasses itself: drop blocks= "
                                 "(block_gates=False keeps every block)")
            check_threads(self.threads)
            if self.solver not in SOLVERS:
                raise InputError(f"unknown solver {self.solver!r} (choose from milp, greedy)")
        elif self.dims:
            raise InputError("dims= gives the sizes latency=R is timed at: give latency= too")
        elif self.measure_groups and (self.plan is not None or
                                      (self.flops is None and self.params is None)):
            raise InputError("measure_groups= allocates the channels for a target: give "
                             "flops=, params= or latency= (and no plan=)")

    def _check_choices(self) -> None:
        if self.method not in scoring.METHODS:
            raise InputError(f"unknown method {self.method!r} (choose from "
                             f"{', '.join(scoring.METHODS)})")
        if self.plan is None and self.flops is None and self.params is None \
                and self.latency is None and not self.blocks and self.max_error is None:
            raise InputError("give a target: flops=R and/or params=R, latency=R, or blocks=N / "
                             "max_error=E")
        if self.block_score not in BLOCK_SCORES:
            raise InputError(f"unknown block score {self.block_score!r} (choose from "
                             f"{', '.join(BLOCK_SCORES)})")
        if self.order is not None and self.order not in ORDERS:
            raise InputError(f"unknown order {self.order!r} (choose from auto, obs, scores)")
        if self.heal not in HEAL_MODES:
            raise InputError(f"unknown heal mode {self.heal!r} (choose from none, bias, stats, "
                             "lsq)")

    def _check_numbers(self) -> None:
        b = self.blocks
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 0):
            raise InputError(f"blocks must be a count >= 0, got {b!r}")
        if self.max_error is not None and not self.max_error >= 0:
            raise InputError(f"max_error must be >= 0, got {self.max_error!r}")
        if not (self.steps >= 1 and self.alpha >= 0 and 0 < self.base <= 1
                and 0 <= self.min_keep < 1):
            raise InputError("need steps >= 1, alpha >= 0, 0 < base <= 1 and 0 <= min_keep < 1")
        r = self.round_to
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise InputError(f"round_to must be an integer >= 1, got {r!r}")


def check_ratio(name: str, r: float | None) -> None:
    if r is None:
        return
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 < r <= 1):
        raise InputError(f"{name} must be a fraction to keep in (0, 1], got {r!r}")


def check_threads(threads) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
