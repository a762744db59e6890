"""Zoo coverage of the dynamo ONNX exporter (the TorchScript exporter's is in ``test_zoo.py``):
every emitted model is valid, smaller, and equal to the original with the removed channels
zeroed."""

from __future__ import annotations

import pytest

from zoo import ALL
from zoo_checks import check_onnx_route


# FCN-ResNet50's dynamo export (30 s on 2 busy cores) runs in `make test-all`; its fx route and
# the others' exports run here
HEAVY = {"seg_fcn_resnet50"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in ALL])
def test_onnx_dynamo(name):
    check_onnx_route(name, "dynamo")
