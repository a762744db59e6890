"""Calibration runners: execute a model on calibration batches and hand the requested IR
tensors, as numpy arrays, to a reducer (a pass). The only place besides frontends and emitters
that runs torch or onnxruntime."""

from .data import Batches, calibration_batches

__all__ = ["Batches", "calibration_batches"]
