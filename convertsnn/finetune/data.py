"""Training data: the held-out split for model selection, batches and augmentation.

Batches are read straight from the in-memory uint8 images by index, so an epoch's order is a
pure function of (seed, epoch) and resuming mid-epoch only skips indices; augmentation draws
from its own generator, whose state goes into the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convertsnn.data import ImageDataset, check_dataset_fits, load_dataset
from convertsnn.data.datasets import split_spec
from convertsnn.errors import ConvertSNNError


def load_training_data(
    spec: str,
    val_fraction: float,
    seed: int,
    data_dir: str | None = None,
    limit: int | None = None,
    input_size: tuple[int, ...] | None = None,
) -> tuple[ImageDataset, ImageDataset | None]:
    """The training split of ``spec`` (first ``limit`` images), less a held-out part.

    The held-out images (``val_fraction``, chosen by ``seed``) are for model selection; the
    test split is never used.
    """
    if split_spec(spec, "train")[1] != "train":
        raise ConvertSNNError(
            f"--data '{spec}' names the test split; training and model selection use the "
            "training split only (drop the ':test' suffix)"
        )
    data = load_dataset(spec, split="train", data_dir=data_dir, limit=limit)
    check_dataset_fits(data, spec, input_size)
    return holdout_split(data, val_fraction, seed)


def holdout_split(
    data: ImageDataset, fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """``(train, held_out)``: a seeded random ``fraction`` of ``data`` is held out."""
    n_val = round(fraction * len(data))
    if n_val == 0:
        return data, None
    if n_val >= len(data):
        raise ConvertSNNError(
            f"val_fraction {fraction} leaves no training images out of {len(data)}"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return _take(data, train), _take(data, val)


def _take(data: ImageDataset, index: torch.Tensor) -> ImageDataset:
    return ImageDataset(data.images[index], data.labels[index], data.name)


def batch(
    data: ImageDataset, index: list[int], augment: Augmenter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, C, H, W]`` in [0, 1] (augmented) and labels for ``index``."""
    idx = torch.as_tensor(index, dtype=torch.long)
    return augment(data.images[idx].float().div(255)), data.labels[idx]


class Augmenter:
    """``none`` or ``crop-flip``: random 4-pixel-padded crop (zero fill) and horizontal flip,
    the standard CIFAR augmentation (seed 001 uses it for finetuning), per image."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        b, _, h, w = x.shape
        padded = F.pad(x, (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (b, 2), generator=self.generator).tolist()
        x = torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
        )
        flip = torch.rand(b, generator=self.generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
