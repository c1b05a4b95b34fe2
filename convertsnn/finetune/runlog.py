"""The run's logs next to its checkpoint: ``log.jsonl`` (steps and epochs), ``log.csv``
(one row per epoch) and, optionally, TensorBoard scalars under ``tensorboard/``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import atomic_write


class RunLog:
    """Append-only JSONL log; records after ``resume_step`` (from a run that was killed after
    its last checkpoint) are dropped first, so a resumed run's log reads as one run."""

    def __init__(
        self, out_dir: Path, enabled: bool, tensorboard: bool = False, resume_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.jsonl = out_dir / "log.jsonl"
        self.csv = out_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        kept = [r for r in self._records() if r.get("global_step", 0) <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.jsonl, lambda tmp: Path(tmp).write_text(text))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConvertSNNError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from None
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)

    def _records(self) -> list[dict]:
        if not self.jsonl.is_file():
            return []
        records = []
        for line in self.jsonl.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill
        return records

    def write(self, record: dict) -> None:
        """Append one record (and its numbers to TensorBoard)."""
        if not self.enabled:
            return
        with self.jsonl.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            kind = record.get("type", "log")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step", "global_step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, record["global_step"])
            self.writer.flush()

    def write_epochs(self, history: list[dict]) -> None:
        """Rewrite ``log.csv`` from the epoch records."""
        if not self.enabled or not history:
            return
        columns = list(dict.fromkeys(k for record in history for k in record))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.csv, lambda tmp: Path(tmp).write_text(buffer.getvalue()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
