"""Plans (what to remove, serialisable) and rewrites (what that means for every tensor).

A :class:`Plan` names channel groups by their stable key (``w12.out``: the output channels of
the 12th weighted op in execution order) and lists the unit indices to remove, so one plan
applies to the fx module and to the ONNX export of the same model. A :class:`Rewrite` is the
plan resolved against one graph: kept indices per tensor axis and canonical attribute updates,
which the emitters apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLAN_VERSION = 1


@dataclass
class Plan:
    remove: dict[str, list[int]] = field(default_factory=dict)  # group key -> unit indices
    units: dict[str, int] = field(default_factory=dict)  # group key -> unit count (fingerprint)
    meta: dict[str, Any] = field(default_factory=dict)
    bypass: list[str] = field(default_factory=list)  # block keys ("b3") whose branch is removed

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "remove": {k: sorted(int(i) for i in v)
                                                    for k, v in self.remove.items()},
                "units": dict(self.units), "meta": dict(self.meta), "bypass": list(self.bypass)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
            raise ValueError(f"not an idapgraph plan (version {PLAN_VERSION})")
        return cls(remove={str(k): [int(i) for i in v] for k, v in d.get("remove", {}).items()},
                   units={str(k): int(v) for k, v in d.get("units", {}).items()},
                   meta=dict(d.get("meta", {})), bypass=[str(b) for b in d.get("bypass", [])])

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.remove.values())


@dataclass
class Rewrite:
    keep: dict[str, dict[int, np.ndarray]]  # tensor -> axis -> kept indices (changed axes only)
    removed: dict[str, dict[int, np.ndarray]]  # tensor -> axis -> removed indices
    attrs: dict[str, dict[str, Any]]  # node -> canonical attribute updates
    new_shapes: dict[str, tuple]  # tensor -> shape after the rewrite

    def kept(self, tensor: str, axis: int) -> np.ndarray | None:
        return self.keep.get(tensor, {}).get(axis)
