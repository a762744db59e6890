"""idapgraph: structured pruning as a graph compiler, for torch.fx and ONNX."""

from .api import Analysis, Report, Result, analyze, apply_plan, compress, latency, load, profile
from .errors import EmitError, IdapgraphError, InputError
from .ir.plan import Plan

__version__ = "0.1.0"
__all__ = ["compress", "analyze", "apply_plan", "latency", "profile", "load", "Result", "Report", "Analysis", "Plan",
           "IdapgraphError", "InputError", "EmitError", "__version__"]
