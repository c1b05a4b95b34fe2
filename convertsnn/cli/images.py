"""Test images for a model, checked against its input size before anything runs."""

from __future__ import annotations

import torch

from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork


def model_images(
    snn: SpikingNetwork, data: str, limit: int | None, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images ``[N, C, H, W]`` in [0, 1], labels and the dataset name; a one-line error when
    the images do not have the model's input size."""
    if limit is not None and limit < 1:
        raise ConvertSNNError(f"the number of images must be at least 1, got {limit}")
    dataset = load_dataset(data, split="test", data_dir=data_dir, limit=limit)
    if snn.input_size and dataset.image_size != snn.input_size:
        raise ConvertSNNError(
            f"images in {data} are {dataset.image_size} but the model expects {snn.input_size}"
        )
    images, labels = dataset.tensors()
    return images, labels, dataset.name
