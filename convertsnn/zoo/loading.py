"""Load zoo models by name: ``pull`` (verified local file), ``load`` (SNN), ``load_ann`` (ANN).

``kind: snn`` entries are files written by :func:`convertsnn.save_snn`; :func:`load` returns the
ready :class:`SpikingNetwork` (its metadata carries the preprocessing, input size and the zoo
name and digest). ``kind: ann`` entries are self-describing ANN files written by
:func:`convertsnn.importers.save_ann`; :func:`load_ann` returns the :class:`LoadedANN` (model
taking [0, 1] images plus its preprocessing), ready for ``convert``. Asking one for the other
is a one-line error that names the right call.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.importers import LoadedANN
from convertsnn.importers import load_ann as load_ann_source
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn
from convertsnn.zoo.hub import fetch, verify
from convertsnn.zoo.registry import ZooEntry, model_info

ZOO_PREFIX = "zoo:"


def entry_file(entry: ZooEntry, force: bool = False) -> Path:
    """The verified local file of ``entry`` (downloaded to the cache for URL entries)."""
    local = entry.local_file()
    if local is None:
        hint = f"run `convertsnn zoo pull {entry.name} --force` to download it again"
        return fetch(str(entry.url), entry.sha256, force=force, hint=hint)
    if not local.is_file():
        raise ConvertSNNError(
            f"the file of zoo model '{entry.name}' is missing: {local}; restore it (git "
            f"checkout) or rebuild it with `convertsnn zoo build {entry.name}`"
        )
    return verify(
        local,
        entry.sha256,
        f"restore it (git checkout) or rebuild it with `convertsnn zoo build {entry.name}`",
    )


def pull(name: str, force: bool = False, index: str | os.PathLike | None = None) -> Path:
    """Download (if needed) and verify the file of zoo model ``name``; return its path."""
    return entry_file(model_info(name, index), force=force)


def load(
    name: str, device: str | torch.device = "cpu", index: str | os.PathLike | None = None
) -> SpikingNetwork:
    """The zoo SNN ``name``, verified, on ``device``, in eval mode."""
    entry = model_info(name, index)
    if entry.kind != "snn":
        raise ConvertSNNError(
            f"zoo model '{name}' is an ANN; load it with convertsnn.zoo.load_ann('{name}') and "
            "convert it, or pick an SNN from `convertsnn zoo list`"
        )
    snn = load_snn(entry_file(entry), device)
    snn.metadata["zoo"] = {"name": entry.name, "sha256": entry.sha256}
    return snn


def load_ann(name: str, index: str | os.PathLike | None = None) -> LoadedANN:
    """The zoo ANN ``name`` (model taking [0, 1] images, with its preprocessing)."""
    entry = model_info(name, index)
    if entry.kind != "ann":
        raise ConvertSNNError(
            f"zoo model '{name}' is an SNN; load it with convertsnn.zoo.load('{name}')"
        )
    ann = load_ann_source(str(entry_file(entry)))
    ann.source = {**ann.source, "type": "zoo", "name": entry.name, "sha256": entry.sha256}
    return ann


def resolve_model_file(spec: str, index: str | os.PathLike | None = None) -> Path:
    """``zoo:NAME`` to the verified local file of that zoo model; anything else to a Path."""
    if spec.startswith(ZOO_PREFIX):
        return pull(spec.removeprefix(ZOO_PREFIX), index=index)
    return Path(spec)
