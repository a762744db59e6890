"""Zoo coverage of the dynamo ONNX exporter (the TorchScript exporter's is in ``test_zoo.py``):
every emitted model is valid, smaller, and equal to the original with the removed channels
zeroed."""

from __future__ import annotations

import pytest

from zoo import ALL
from zoo_checks import check_onnx_route


@pytest.mark.parametrize("name", ALL)
def test_onnx_dynamo(name):
    check_onnx_route(name, "dynamo")
