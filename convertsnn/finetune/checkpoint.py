"""Training-state checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a torch file of plain containers and tensors (read back with
``torch.load(weights_only=True)``, never unpickling objects), written atomically: model and
optimizer state, the LR schedule, progress (epoch, step, history, best epoch, running epoch
sums), the augmentation generator and every rank's random number generators (torch, CUDA,
numpy, python), so a resumed run draws the same random numbers as an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import atomic_write

FORMAT = "convertsnn.train-state"
VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators' states as tensors and numbers."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "words": torch.tensor(words), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the generators from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plain containers and tensors) atomically."""
    path = Path(path)
    document = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(document, tmp))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights_only, no code runs)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on a damaged file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertSNNError(
            f"{path} is not a readable training checkpoint ({first}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConvertSNNError(f"{path} is not a convertsnn training checkpoint")
    if state.get("version", 0) > VERSION:
        raise ConvertSNNError(f"{path} was written by a newer convertsnn; upgrade to resume it")
    return state
