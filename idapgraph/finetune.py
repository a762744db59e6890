"""Recovering accuracy after compression (torch): distillation from the original model.

* :func:`distill` -- one run after ``compress``: the compressed model learns the original's
  outputs on unlabelled inputs for a time budget
  (``distill(small, original, images, seconds=600, augment=flip_crop())``).
* :func:`distill_onnx` -- the same for ONNX: an ONNX student and teacher in (converted by
  onnx2torch, an optional dependency), the distilled student out as a checked ONNX model.
* :func:`between_steps` -- a ``finetune=`` callback for ``compress`` (distillation from the
  previous step's model between pruning steps; also ``idapgraph.distill``).

torch is imported when these run, not when this module is imported.
"""

from __future__ import annotations

from .runners.distill import History, distill, flip_crop
from .runners.distill_onnx import distill_onnx
from .runners.finetune import distill as between_steps

__all__ = ["distill", "distill_onnx", "flip_crop", "History", "between_steps"]
