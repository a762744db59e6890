"""Backend-neutral IR: graph, op-rule table, annotations, plans."""

from .annotations import ChannelGroup, Coupling, FrozenSpot, Member
from .graph import ACTIVATION, META, PARAM, Graph, Node, Tensor
from .ops import OPS, OpDef, Relations, Space
from .plan import Plan, Rewrite

__all__ = ["Graph", "Node", "Tensor", "ACTIVATION", "META", "PARAM", "OPS", "OpDef", "Relations",
           "Space", "ChannelGroup", "Coupling", "FrozenSpot", "Member", "Plan", "Rewrite"]
