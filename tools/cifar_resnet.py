"""The CIFAR-10 ResNets of He et al. (2016) -- 3 stages of basic blocks at 16/32/64 channels,
parameter-free "option A" shortcuts (stride-2 subsampling, zero channels padded on) -- written
to load the pretrained state dicts in ``../shared/data/cifar10-resnets/`` (keys ``conv1``,
``bn1``, ``layer1..3``, ``linear``; stored with a ``module.`` prefix), and the CIFAR-10 test
images of ``../shared/data/cifar10-test/`` normalised as those weights were trained.

    model = cifar_resnet.pretrained(56)   # or resnet(56, width=2, projection=True): random
    x, y = cifar_resnet.images(range(0, 256))    # float32 NCHW, int64 labels
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = Path(os.environ.get("IDAPGRAPH_DATA",  # a worktree elsewhere: point at shared/data
                           Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # what the weights were trained with
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class PadShortcut(nn.Module):
    """Option A: every other pixel, with ``extra`` zero channels on each side."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra, self.extra))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, projection: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # option A (padding), or B (1x1 conv + BN)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout)) if projection \
                else PadShortcut(cout // 4)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, classes: int = 10, width: int = 1,
                 projection: bool = False) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths, cin, stages = (16 * width, 32 * width, 64 * width), 16 * width, []
        self.conv1 = nn.Conv2d(3, cin, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        for i, w in enumerate(widths):
            blocks = [Block(cin if j == 0 else w, w, 2 if i and j == 0 else 1, projection)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet(depth: int, seed: int = 0, width: int = 1, projection: bool = False) -> CifarResNet:
    """Random weights; ``width`` multiplies every stage's channels (16/32/64); ``projection``:
    1x1-conv shortcuts where the shape changes (option B) instead of zero padding."""
    torch.manual_seed(seed)
    return CifarResNet(depth, width=width, projection=projection).eval()


def pretrained(depth: int) -> CifarResNet:
    """The pretrained ResNet-``depth`` (20, 32, 44 or 56) of ``cifar10-resnets``."""
    path = next((DATA / "cifar10-resnets").glob(f"resnet{depth}-*.th"))
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    model = CifarResNet(depth)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def balanced(n: int) -> list[int]:
    """``n`` test-image indices, the same number from every class (the stored test set is
    sorted by class, 1,000 images each: its first images are all airplanes)."""
    per = -(-n // 10)
    return sorted([c * 1000 + i for i in range(per) for c in range(10)][:n])


def images(index) -> tuple[np.ndarray, np.ndarray]:
    """Test images ``index`` (a range or array) as normalised float32 NCHW, and their labels."""
    with np.load(DATA / "cifar10-test" / "cifar10_test.npz") as d:
        x, y = d["x"][index], d["y"][index]
    x = (x.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y.astype(np.int64)


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 of a torch module on ``x``."""
    with torch.no_grad():
        preds = np.concatenate([model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                                for i in range(0, len(x), batch)])
    return float((preds == y).mean())
