"""The backend-neutral dependency graph.

A :class:`Graph` holds :class:`Tensor` values and :class:`Node` operations. Nodes carry a
*canonical op* name (see :mod:`idapgraph.ir.ops`) and canonical attributes; backend op names stop
at the frontends (they survive only in ``Node.source`` for reports). The node/tensor connectivity
is mirrored in a networkx ``DiGraph`` over node names for graph algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import networkx as nx
import numpy as np

# Tensor kinds
ACTIVATION = "activation"  # computed at run time from the model inputs
PARAM = "param"  # a stored array (weight, bias, norm statistics, other float constants)
META = "meta"  # shape arithmetic / non-tensor values (sizes, ints); never carries channels

Dim = int | None  # None: symbolic or unknown size


@dataclass
class Tensor:
    """A value in the graph.

    ``shape`` is a tuple of ints (``None`` for a symbolic or unknown dimension) or ``None`` when
    the rank itself is unknown. ``load`` returns the array of a :data:`PARAM` tensor on demand, so
    frontends can keep large weights lazy.
    """

    name: str
    shape: tuple[Dim, ...] | None
    dtype: str = "float32"
    kind: str = ACTIVATION
    producer: str | None = None
    consumers: list[str] = field(default_factory=list)
    load: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    trainable: bool = False  # counted as a parameter (torch: nn.Parameter; ONNX: float initializer)
    symbolic: tuple[int, ...] = ()  # axes whose size varies at run time while ``shape`` holds
    # the example's size (torch.export's dynamic batch/sequence); ONNX writes None instead

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def value(self) -> np.ndarray:
        if self.load is None:
            raise ValueError(f"tensor {self.name!r} has no stored value")
        return self.load()

    def numel(self) -> int | None:
        if self.shape is None or any(d is None for d in self.shape):
            return None
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Node:
    """One operation.

    ``inputs`` are tensor names in the canonical operand order of the op (see ``ops.OPS``), with
    ``None`` for an absent optional operand (e.g. a conv without bias). ``attrs`` are canonical
    attributes (``groups``, ``axis``, ``perm``, ``target`` …). ``handle`` points back to the
    backend object (fx node, onnx-graphsurgeon node) and is only read by that backend's code.
    """

    name: str
    op: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # backend op for reports, e.g. "Conv" or "call_module:Conv2d"
    handle: Any = field(default=None, repr=False, compare=False)

    def present_inputs(self) -> list[str]:
        return [t for t in self.inputs if t is not None]


class Graph:
    """Tensors, nodes in a topological order, graph inputs and outputs."""

    def __init__(self, backend: str = "") -> None:
        self.backend = backend
        self.tensors: dict[str, Tensor] = {}
        self.nodes: dict[str, Node] = {}  # insertion order is a topological order
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.nx = nx.DiGraph()

    # -- construction -------------------------------------------------------------------------
    def add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self.tensors:
            raise ValueError(f"duplicate tensor {tensor.name!r}")
        self.tensors[tensor.name] = tensor
        return tensor

    def add_node(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node {node.name!r}")
        for t in node.present_inputs():
            if t not in self.tensors:
                raise ValueError(f"node {node.name!r} reads unknown tensor {t!r}")
        self.nodes[node.name] = node
        self.nx.add_node(node.name)
        for t in node.present_inputs():
            tensor = self.tensors[t]
            tensor.consumers.append(node.name)
            if tensor.producer is not None:
                self.nx.add_edge(tensor.producer, node.name)
        for t in node.outputs:
            if t not in self.tensors:
                raise ValueError(f"node {node.name!r} writes undeclared tensor {t!r}")
            self.tensors[t].producer = node.name
        return node

    # -- queries ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.tensors[name].shape

    def producer(self, name: str) -> Node | None:
        """The node that writes tensor ``name`` (None for inputs and stored tensors)."""
        p = self.tensors[name].producer
        return self.nodes[p] if p else None

    def run_shape(self, name: str) -> tuple[Dim, ...] | None:
        """The shape with ``None`` on every axis whose size varies at run time (what a stored
        constant of the tensor's shape may not assume)."""
        t = self.tensors[name]
        if t.shape is None or not t.symbolic:
            return t.shape
        return tuple(None if i in t.symbolic else d for i, d in enumerate(t.shape))

    def params(self) -> Iterable[Tensor]:
        return (t for t in self.tensors.values() if t.kind == PARAM)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts
