"""Cost analysis: parameters and FLOPs per node and in total.

FLOPs follow the convention of torchvision's model table and Torch-Pruning's counter: one
multiply-accumulate counts as one FLOP for conv/linear/matmul (bias adds one per output element);
elementwise, activation, norm and pooling ops count one (norms two) per element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ir.graph import PARAM, Graph
from ..ir.ops import OPS


@dataclass
class Cost:
    flops: int
    params: int
    per_node: dict[str, int] = field(default_factory=dict)


def count(graph: Graph, shape: Callable[[str], tuple] | None = None,
          removed: set[str] | frozenset = frozenset()) -> Cost:
    """Count FLOPs and trainable parameters, optionally under changed tensor ``shape``\\ s and
    without the ``removed`` nodes (bypassed blocks)."""
    shape = shape or graph.shape
    per_node = {n.name: int(OPS[n.op].cost(n, shape)) for n in graph if n.name not in removed}
    params = 0
    for t in graph.tensors.values():
        if t.kind == PARAM and t.trainable and any(c not in removed for c in t.consumers):
            s = shape(t.name)
            if s is not None and all(d is not None for d in s):
                params += int(np.prod(s, dtype=np.int64)) if s else 1
    return Cost(flops=sum(per_node.values()), params=params, per_node=per_node)
