"""Resumable state for long evaluations: one directory, one file per (model setting, eps).

``StateDir(path, config)`` writes ``config.json`` on first use and refuses to continue a run
made with other settings. Each slot (:class:`RunState`) is a safetensors file holding the
ensemble's tensors (per-sample correctness, worst points, breaker, pending samples) with its
bookkeeping as JSON metadata. Writes are atomic and at most every ``interval`` seconds, except
the final one of a slot.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import atomic_write

_TENSORS = ("correct", "x_adv", "breaker", "pending", "groups")


class StateDir:
    """A directory of slots for one evaluation whose settings are ``config``."""

    def __init__(self, path: str | os.PathLike, config: dict) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConvertSNNError(f"--resume needs a directory, but {self.path} is a file")
        config_file = self.path / "config.json"
        config = json.loads(json.dumps(config))  # normalise tuples and numbers
        if config_file.is_file():
            saved = json.loads(config_file.read_text())
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if changed:
                raise ConvertSNNError(
                    f"the state in {self.path} was made with other settings "
                    f"({', '.join(changed)}); use another --resume directory or delete it"
                )
        else:
            text = json.dumps(config, indent=2) + "\n"
            atomic_write(config_file, lambda tmp: Path(tmp).write_text(text))

    def slot(self, key: str, interval: float = 30.0) -> RunState:
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)
        return RunState(self.path / f"{name}.safetensors", interval)


class RunState:
    """One ensemble run's progress (see ``WorstCase.run``'s state) plus its run list."""

    def __init__(self, path: Path, interval: float = 30.0) -> None:
        self.path, self.interval = path, interval
        self.last_save = 0.0

    def load(self, device: str | torch.device = "cpu") -> dict | None:
        """``{"runs", "ranking", "progress"}`` as saved, or None if nothing was saved."""
        if not self.path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["state"])
            tensors = load_file(str(self.path), device=str(device))
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise ConvertSNNError(
                f"cannot read the state file {self.path} ({str(err).splitlines()[0]}); "
                "delete it to start this part afresh"
            ) from None
        progress = meta.pop("progress")
        for name in _TENSORS:
            progress[name] = tensors.get(name)
        return {**meta, "progress": progress}

    def save(self, progress: dict, meta: dict) -> None:
        """Save if ``interval`` seconds passed since the last save, or if the run is complete."""
        complete = progress["run"] >= len(meta["runs"])
        if not complete and time.monotonic() - self.last_save < self.interval:
            return
        tensors = {
            k: progress[k].detach().cpu().contiguous()
            for k in _TENSORS
            if progress.get(k) is not None
        }
        book = {k: v for k, v in progress.items() if k not in _TENSORS}
        document = json.dumps({**meta, "progress": book})
        atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata={"state": document}))
        self.last_save = time.monotonic()
