"""Tiny learnable data and a tiny converted SNN for the objective and finetuning tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from convertsnn import convert, save_snn
from convertsnn.data import load_dataset
from convertsnn.layers import Normalize

SIZE, CLASSES = 6, 3


def separable_npz(
    path: Path, n: int = 48, size: int = SIZE, channels: int = 3, seed: int = 0
) -> Path:
    """Noisy images whose label (of 3) is the brightest horizontal band (learnable quickly)."""
    rng = np.random.default_rng(seed)
    band = size // CLASSES
    arrays = {}
    for split in ("train", "test"):
        labels = rng.integers(0, CLASSES, n)
        images = rng.integers(0, 110, (n, size, size, channels))
        for i, label in enumerate(labels):
            images[i, label * band : (label + 1) * band] += 120
        arrays[f"x_{split}"] = images.astype(np.uint8)
        arrays[f"y_{split}"] = labels.astype(np.int64)
    np.savez(path, **arrays)
    return path


def tiny_ann(seed: int = 0) -> nn.Module:
    """Conv-ReLU-pool-linear-ReLU-linear for 3x6x6 images (3 classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize([0.5] * 3, [0.25] * 3),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (SIZE // 2) ** 2, 12),
        nn.ReLU(),
        nn.Linear(12, CLASSES),
    )


def tiny_snn_file(path: Path, data: Path, timesteps: int = 2) -> Path:
    """Convert :func:`tiny_ann` (max-norm calibration on ``data``) and save it to ``path``."""
    loader = DataLoader(load_dataset(str(data), "train"), batch_size=16)
    metadata = {"input_size": [3, SIZE, SIZE], "num_classes": CLASSES}
    snn = convert(tiny_ann(), loader, timesteps, calibration="max", metadata=metadata)
    save_snn(snn, path)
    return path
