"""Load source ANNs: ``load_ann(SOURCE)`` resolves a source string to a :class:`LoadedANN`."""

from __future__ import annotations

from pathlib import Path

from convertsnn.errors import ConvertSNNError
from convertsnn.importers.base import LoadedANN, Preprocessing
from convertsnn.importers.checkpoint import TORCH_SUFFIXES, load_checkpoint, save_ann


def load_ann(
    source: str,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    preprocessing: Preprocessing | None = None,
) -> LoadedANN:
    """Resolve ``source`` (a checkpoint path; see docs/importers.md) to an ANN."""
    path = Path(source)
    if path.suffix in (".safetensors", *TORCH_SUFFIXES):
        return load_checkpoint(path, arch, arch_kwargs, preprocessing)
    if not path.exists():
        raise ConvertSNNError(f"source not found: {source}")
    raise ConvertSNNError(
        f"cannot tell what kind of model '{source}' is; use a .safetensors or torch checkpoint "
        "(.pt/.pth/.th) file"
    )


__all__ = ["LoadedANN", "Preprocessing", "load_ann", "save_ann"]
