"""What the stages of ``compress`` hand one another (:class:`State`)."""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..analysis import Analysis
from ..ir.plan import Plan, Rewrite
from ..options import CompressOptions
from ..passes.heal import HealReport


@dataclass
class State:
    """The analysis and options every stage reads, and what each stage adds: ``select`` the
    plan (and ``log``, ``latency`` record, calibration ``kind``), ``resolve`` the rewrite,
    ``emit`` the model ``out``, ``heal`` its healing report, ``truncate`` the bypassed blocks,
    ``measure`` the latency after. Warnings go through :meth:`warn`."""

    a: Analysis
    opts: CompressOptions
    warnings: list[str] = field(default_factory=list)
    kept_nodes: set[str] = field(default_factory=set)
    plan: Plan | None = None
    reached: bool = True
    kind: str = "none"  # calibration: data, random or none
    log: list[dict] = field(default_factory=list)  # idap's selection steps
    protected: dict[str, float] | None = None  # group -> error of its first cut (select.guard)
    # measure_groups with FLOPs/params targets, per round: group -> kept count -> error
    group_losses: list[dict[str, dict[str, float]]] | None = None
    lat_info: dict[str, Any] | None = None  # latency=R's record
    rewrite: Rewrite | None = None
    out: Any = None  # the emitted model
    heal: HealReport = field(default_factory=HealReport)
    bypassed: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)  # nodes of bypassed blocks
    block_scores: dict[str, float] = field(default_factory=dict)
    stored: int = 0  # elements of the mean constants stage 2 stored

    def warn(self, msg: str, stacklevel: int = 3) -> None:
        """Record ``msg`` in the report and issue it as a Python warning."""
        self.warnings.append(msg)
        warnings.warn(msg, stacklevel=stacklevel)


def released() -> None:
    """Free the model variants just dropped: an fx GraphModule is a reference cycle, so a
    dropped copy's weights wait for a full garbage collection, which comes rarely (layer
    removal on a 0.58 GiB decoder: the process peak 4.5 GiB before, 3.9 with this
    alone, 2.2 once bypassed variants shared their weights, :func:`emit.fx.bypass`). The
    analysis's own objects are frozen (``stages._analysis_frozen``), so the collection passes
    only over the new ones."""
    gc.collect()
