"""Typed annotations that analysis passes attach to a graph.

They are plain dataclasses so that other compilers can read and build them without running our
passes, and so that JSON reports are derived from them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ops import Space


@dataclass
class Member:
    """One channel space of a group: every tensor axis in ``spaces`` loses the same indices.

    ``index[u]`` are the indices unit ``u`` occupies on these axes (one for a plain channel,
    several for a flatten block or a conv group).
    """

    spaces: list[Space]
    index: np.ndarray  # shape (n_units, k)


@dataclass
class ChannelGroup:
    """Channels that can only be removed together, as a list of removable units."""

    key: str  # stable name used by plans, e.g. "w12.out" (12th weighted op, output channels)
    members: list[Member]
    anchor: Space  # the axis whose index orders the units

    @property
    def n_units(self) -> int:
        return int(self.members[0].index.shape[0])

    def params(self, graph) -> list[Space]:
        from .graph import PARAM

        return [s for m in self.members for s in m.spaces if graph.tensors[s.tensor].kind == PARAM]


@dataclass
class FrozenSpot:
    """Channels of a weighted layer that must stay, and why."""

    layer: str  # node name of the weighted op
    source: str  # backend op
    role: str  # "out" or "in" channels
    channels: int
    reason: str


@dataclass
class Coupling:
    """Result of coupling analysis: prunable groups, frozen spots and the space classes."""

    groups: list[ChannelGroup]
    frozen: list[FrozenSpot]
    space_class: dict[Space, int]  # every tensor axis -> its class of identical spaces
    class_size: list[int | None]
    class_spaces: list[list[Space]] = field(default_factory=list)

    def group(self, key: str) -> ChannelGroup:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)
