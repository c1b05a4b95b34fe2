"""Datasets: torchvision names or .npz files, as uint8 tensors served in [0, 1]."""

from convertsnn.data.datasets import ImageDataset, load_dataset

__all__ = ["ImageDataset", "load_dataset"]
