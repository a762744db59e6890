"""The demo's data handling (the demo itself compresses EfficientNet-Lite0 with its ImageNet
weights: a minute of compute, run by ``make demo``, not here)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from PIL import Image

from idapgraph.errors import InputError
from idapgraph.runners import demo


def test_imagenet_sample_split_crop_and_scale(tmp_path):
    rows = ["file\tlabel\twnid\tname"]
    for i in range(10):
        a = np.full((256, 300, 3), 0, np.uint8)
        a[128, 150] = 255  # the centre pixel survives the centre crop
        a[:, :38] = 255    # columns outside the 224-wide centre crop do not
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png\t{i * 7}\tn{i}\tthing {i}")
    (tmp_path / "labels.tsv").write_text("\n".join(rows) + "\n")
    calib, x, y = demo.imagenet_sample(tmp_path)
    assert calib.shape == (2, 3, 224, 224) and x.shape == (8, 3, 224, 224)
    assert list(y) == [7 * i for i in range(10) if i % 5]  # images 0 and 5 calibrate
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    assert x[0, 0, 128 - 16, 150 - 38] == 1.0  # the centre pixel, at its cropped position
    assert (x[0, :, :, 0] == -1.0).all()  # the white band was cropped away


def test_imagenet_sample_absent_is_none(tmp_path):
    assert demo.imagenet_sample(tmp_path / "missing") is None


def test_missing_wheel_is_one_clear_error(monkeypatch):
    real = builtins.__import__

    def no_efficientnet(name, *a, **k):
        if name.startswith("efficientnet"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_efficientnet)
    with pytest.raises(InputError, match="pip install --no-deps efficientnet-lite-pytorch"):
        demo.efficientnet_lite0()
