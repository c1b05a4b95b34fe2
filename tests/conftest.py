"""Shared fixtures: tiny models and small data (no network, no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.layers import Normalize

ASSETS = Path(__file__).resolve().parents[1] / "convertsnn" / "assets"


class TinyResNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block with functional ReLUs, global pool, linear."""

    def __init__(self, channels: int = 3, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.norm = Normalize([0.5] * channels, [0.25] * channels)
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.norm(x))))
        y = self.conv3(torch.relu(self.conv2(x)))
        x = (x + y).relu()
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so folding is actually tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(TinyResNet())


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(32, 3, 12, 12)


@pytest.fixture
def mnist_sample() -> Path:
    """The real MNIST sample shipped with the demo (256 train + 1000 test images)."""
    return ASSETS / "mnist_sample.npz"


def write_npz(path: Path, n: int = 16, shape=(8, 8, 3), classes: int = 10, seed: int = 0) -> Path:
    """A small random uint8 dataset in the standard npz layout."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "test"):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, classes, n).astype(np.int64)
    np.savez(path, **arrays)
    return path
