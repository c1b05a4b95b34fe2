"""Datasets: torchvision names or .npz files, as uint8 tensors served in [0, 1]."""

from convertsnn.data.datasets import ImageDataset, check_dataset_fits, load_dataset

__all__ = ["ImageDataset", "check_dataset_fits", "load_dataset"]
