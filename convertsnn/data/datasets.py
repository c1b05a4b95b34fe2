"""Image classification datasets as uint8 tensors, served as float images in [0, 1].

A dataset spec is one of:

- a torchvision name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``
  (stored under ``data_dir``; downloaded when ``download=True`` and the machine is online);
- a path to an ``.npz`` file with ``x_train``/``y_train``/``x_test``/``y_test`` (uint8 images
  ``[N, H, W]`` or ``[N, H, W, C]``, int64 labels), or with JPEG bytes ``train_jpeg`` +
  ``train_offsets`` (and ``test_*``) instead of ``x_*`` (the layout of ``cifar10_jpeg.npz``).

Any spec may end with ``:train`` or ``:test`` to pick the split.
"""

from __future__ import annotations

import io
import itertools
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from convertsnn.errors import ConvertSNNError
from convertsnn.offline import why_unreachable

TORCHVISION_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")
SPLITS = ("train", "test")


@dataclass
class ImageDataset(Dataset):
    """Images ``[N, C, H, W]`` uint8 and labels ``[N]`` int64; items are (float image, label)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div(255), self.labels[index]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def image_size(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, start: int = 0, stop: int | None = None) -> ImageDataset:
        """Images ``start`` to ``stop`` (in dataset order)."""
        return ImageDataset(self.images[start:stop], self.labels[start:stop], self.name)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float ``[N, C, H, W]`` in [0, 1] and labels ``[N]``."""
        return self.images.float().div(255), self.labels


def split_spec(spec: str, default_split: str) -> tuple[str, str]:
    """``"path.npz:train"`` -> ``("path.npz", "train")``."""
    base, sep, tail = str(spec).rpartition(":")
    if sep and tail in SPLITS:
        return base, tail
    return str(spec), default_split


def load_dataset(
    spec: str,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    limit: int | None = None,
) -> ImageDataset:
    """Load a dataset split as an :class:`ImageDataset` (see the module doc for ``spec``).

    ``limit`` keeps the first ``limit`` images (official order).
    """
    spec, split = split_spec(spec, split)
    if split not in SPLITS:
        raise ConvertSNNError(f"unknown split '{split}'; use 'train' or 'test'")
    if spec.lower() in TORCHVISION_DATASETS:
        dataset = _load_torchvision(spec.lower(), split, data_dir, download)
    elif spec.endswith(".npz") or Path(spec).is_file():
        dataset = _load_npz(Path(spec), split)
    else:
        raise ConvertSNNError(
            f"dataset '{spec}' is neither a file nor a known name; use an .npz path or one of "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    if limit is not None:
        if limit < 1:
            raise ConvertSNNError(f"--limit must be at least 1, got {limit}")
        dataset = dataset.subset(0, limit)
    if len(dataset) == 0:
        raise ConvertSNNError(f"dataset '{spec}' has no images in its '{split}' split")
    if int(dataset.labels.min()) < 0:
        raise ConvertSNNError(
            f"dataset '{spec}' has negative labels (down to {int(dataset.labels.min())}) in its "
            f"'{split}' split; labels must be class indices 0..K-1"
        )
    return dataset


def check_dataset_fits(
    dataset: ImageDataset,
    spec: str,
    input_size: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> None:
    """Refuse images of another size than the model's and labels it has no output for."""
    if input_size and dataset.image_size != tuple(input_size):
        raise ConvertSNNError(
            f"images in {spec} are {dataset.image_size} but the model expects {tuple(input_size)}"
        )
    if num_classes and dataset.num_classes > num_classes:
        raise ConvertSNNError(
            f"{spec} has labels up to {dataset.num_classes - 1} but the model has "
            f"{num_classes} outputs; use data of the model's task"
        )


def _as_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise ConvertSNNError(f"{source}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise ConvertSNNError(
            f"{source}: images must be [N, H, W] or [N, H, W, C], got shape {images.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(images))


def _read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of an npz opened without pickle; object arrays and damage are one line."""
    try:
        return archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ConvertSNNError(
                f"{path}: array '{key}' holds Python objects, which are never unpickled; store "
                "uint8 images and integer labels"
            ) from None
        raise ConvertSNNError(f"{path}: array '{key}' cannot be read ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConvertSNNError(f"{path}: array '{key}' cannot be read ({err})") from None


def _decode_jpeg(data: np.ndarray, offsets: np.ndarray, path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if data.dtype != np.uint8 or data.ndim != 1 or offsets.ndim != 1 or len(offsets) < 2:
        raise ConvertSNNError(f"{path}: JPEG bytes must be uint8 [M] with offsets [N + 1]")
    if np.any(np.diff(offsets) <= 0) or offsets[0] < 0 or offsets[-1] > len(data):
        raise ConvertSNNError(f"{path}: JPEG offsets must increase within the byte array")
    try:
        return np.stack(
            [
                np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB"))
                for a, b in itertools.pairwise(offsets)
            ]
        )
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConvertSNNError(
            f"{path}: the JPEG images cannot be decoded ({err}); all must be RGB of one size"
        ) from None


def _load_npz(path: Path, split: str) -> ImageDataset:
    if not path.is_file():
        raise ConvertSNNError(f"dataset file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except Exception as err:  # numpy raises several types for a file that is not an npz
        raise ConvertSNNError(f"{path} is not a readable .npz file ({err})") from None
    with archive:
        if f"x_{split}" in keys:
            images = _read_array(archive, f"x_{split}", path)
        elif f"{split}_jpeg" in keys and f"{split}_offsets" in keys:
            images = _decode_jpeg(
                _read_array(archive, f"{split}_jpeg", path),
                _read_array(archive, f"{split}_offsets", path),
                path,
            )
        else:
            raise ConvertSNNError(
                f"{path} has no '{split}' split: expected arrays x_{split} and y_{split} "
                f"(found {', '.join(sorted(keys))})"
            )
        if f"y_{split}" not in keys:
            raise ConvertSNNError(f"{path} has images but no labels 'y_{split}'")
        labels = _read_array(archive, f"y_{split}", path)
    tensor = _as_nchw(images, str(path))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConvertSNNError(
            f"{path}: labels y_{split} must be a 1-D integer array, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    labels = torch.from_numpy(labels.astype(np.int64))
    if len(tensor) != len(labels):
        raise ConvertSNNError(
            f"{path}: {len(tensor)} images but {len(labels)} labels in split '{split}'"
        )
    return ImageDataset(tensor, labels, name=f"{path.name}:{split}")


MNIST_SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "mnist_sample.npz"
_DOWNLOAD_HOSTS = {  # where torchvision downloads each dataset from
    "mnist": "ossci-datasets.s3.amazonaws.com",
    "fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
    "svhn": "ufldl.stanford.edu",
}


def _load_torchvision(
    name: str, split: str, data_dir: str | os.PathLike | None, download: bool
) -> ImageDataset:
    """A torchvision dataset from ``data_dir``, downloaded there if missing and online.

    Offline, ``mnist`` falls back to the MNIST sample shipped with convertsnn (256 training and
    1000 test images), with a warning; other datasets fail at once with the reason.
    """
    import torchvision.datasets as tvd

    root = Path(data_dir or os.environ.get("CONVERTSNN_DATA", "~/.cache/convertsnn/data"))
    root = root.expanduser()
    train = split == "train"
    if download:
        try:  # stored already: no network needed
            return _load_torchvision(name, split, data_dir, download=False)
        except ConvertSNNError:
            pass
        offline = why_unreachable(_DOWNLOAD_HOSTS[name])
        if offline and name == "mnist":
            warnings.warn(
                f"MNIST is not in {root} and cannot be downloaded ({offline}): using the MNIST "
                f"sample shipped with convertsnn ({MNIST_SAMPLE.name}: 256 training, 1000 test "
                "images); pass --data-dir to the full dataset for complete results",
                stacklevel=3,
            )
            return _load_npz(MNIST_SAMPLE, split)
        if offline:
            raise ConvertSNNError(
                f"{name} is not in {root} and cannot be downloaded ({offline}); pass --data-dir "
                "to where it is stored, or an .npz file"
            )
    try:
        if name == "svhn":
            ds = tvd.SVHN(str(root), split=split, download=download)
            images = torch.from_numpy(np.ascontiguousarray(ds.data))  # already [N, C, H, W]
            labels = torch.as_tensor(ds.labels, dtype=torch.int64)
            return ImageDataset(images, labels, name=f"svhn:{split}")
        cls = {
            "mnist": tvd.MNIST,
            "fashion-mnist": tvd.FashionMNIST,
            "cifar10": tvd.CIFAR10,
            "cifar100": tvd.CIFAR100,
        }[name]
        ds = cls(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:
        hint = "" if download else " (downloads are off)"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertSNNError(
            f"could not load {name} from {root}{hint}: {reason}; "
            "pass --data-dir to where it is stored, or an .npz file"
        ) from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageDataset(_as_nchw(data, name), labels, name=f"{name}:{split}")
