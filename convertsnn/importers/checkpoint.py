"""Torch checkpoints (state dicts, never unpickled objects) and convertsnn's own ANN files.

- ``PATH.safetensors`` written by :func:`save_ann`: self-describing (architecture, its
  arguments and the preprocessing are in the file's metadata).
- ``PATH.pt`` / ``.pth`` / ``.th`` / ``.ckpt`` or a bare ``.safetensors`` state dict, plus an
  architecture name from :mod:`convertsnn.models` (``--arch``). Torch files are read with
  ``torch.load(weights_only=True)``; a state dict may sit under ``state_dict``, ``model`` or
  ``net`` and carry a ``module.`` prefix (DataParallel).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing, with_normalization
from convertsnn.models import create_model
from convertsnn.snn.serialize import atomic_write, package_versions

ANN_FORMAT = "convertsnn.ann"
TORCH_SUFFIXES = (".pt", ".pth", ".th", ".ckpt", ".bin", ".tar")


def save_ann(
    net: nn.Module,
    path: str | os.PathLike,
    arch: str,
    arch_kwargs: dict,
    preprocessing: Preprocessing,
    extra: dict | None = None,
) -> Path:
    """Write an ANN built by ``create_model(arch, **arch_kwargs)`` as a self-describing file.

    ``net`` is the bare architecture (without the Normalize layer); ``extra`` holds facts such
    as the training recipe and its metrics. The write is atomic.
    """
    document = {
        "format": ANN_FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "preprocessing": preprocessing.to_dict(),
        "versions": package_versions(),
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    path = Path(path)
    atomic_write(
        path, lambda tmp: save_file(state, tmp, metadata={"convertsnn": json.dumps(document)})
    )
    return path


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a checkpoint and, for convertsnn files, their JSON document."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("convertsnn")
            return load_file(str(path)), json.loads(raw) if raw else None
        except (SafetensorError, OSError, ValueError) as err:
            raise ConvertSNNError(
                f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (IndexError, UnpicklingError, ...) on junk
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertSNNError(
            f"{path} is not a torch checkpoint that loads safely with weights_only=True ({first})"
        ) from None
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertSNNError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}, None


def _build(arch: str, arch_kwargs: dict, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    net = create_model(arch, **arch_kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ConvertSNNError(
            f"{path} does not fit architecture '{arch}': {detail}; check --arch"
        ) from None
    return net.eval()


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    preprocessing: Preprocessing | None = None,
) -> LoadedANN:
    """Load an ANN from a checkpoint file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertSNNError(f"checkpoint not found: {path}")
    state, document = read_state_dict(path)
    if document is not None:
        if document.get("format") != ANN_FORMAT:
            raise ConvertSNNError(
                f"{path} holds a '{document.get('format')}' file, not an ANN checkpoint"
            )
        arch = arch or document["arch"]
        arch_kwargs = {**document.get("arch_kwargs", {}), **(arch_kwargs or {})}
        stored = Preprocessing.from_dict(document.get("preprocessing", {}))
        preprocessing = stored.updated(preprocessing)
    if arch is None:
        raise ConvertSNNError(
            f"{path} is a plain state dict: name its architecture with --arch "
            "(see 'convertsnn models')"
        )
    preprocessing = Preprocessing().updated(preprocessing)
    net = _build(arch, arch_kwargs or {}, state, path)
    source = {
        "type": "checkpoint",
        "path": path.name,
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
    }
    return LoadedANN(with_normalization(net, preprocessing), preprocessing, source)
