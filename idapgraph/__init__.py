"""idapgraph: structured pruning as a graph compiler, for torch.fx and ONNX.

The public API: ``compress``, ``analyze``, ``apply_plan``, ``latency``, ``profile``, ``diff``,
``save`` and the types they return; :mod:`idapgraph.passes` for the pass API. Importing it
imports neither torch nor onnx (``distill`` and ``run_demo`` load torch when first used).
"""

from .api import (Analysis, CompressOptions, Report, Result, analyze, apply_plan, compress,
                  latency, load, profile)
from .errors import EmitError, IdapgraphError, InputError
from .files import check_output_path, disk_size, has_external_data, save, write_atomic
from .ir.plan import Plan
from .review import Diff, diff

__version__ = "0.1.0"
__all__ = ["compress", "analyze", "apply_plan", "latency", "profile", "load", "diff", "save",
           "distill", "run_demo", "check_output_path", "disk_size", "has_external_data",
           "write_atomic", "Result", "Report", "Analysis", "CompressOptions", "Diff", "Plan",
           "IdapgraphError", "InputError", "EmitError", "__version__"]


def __getattr__(name: str):
    """``distill`` (:mod:`idapgraph.runners.finetune`) and ``run_demo``
    (:mod:`idapgraph.runners.demo`) import torch: loaded on first use."""
    if name == "distill":
        from .runners.finetune import distill

        return distill
    if name == "run_demo":
        from .runners.demo import run_demo

        return run_demo
    raise AttributeError(f"module 'idapgraph' has no attribute {name!r}")
