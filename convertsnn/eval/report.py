"""Tables for the terminal and Markdown, and JSON result files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from convertsnn.eval.robustness import EvalRow
from convertsnn.snn.serialize import atomic_write


def rows_table(rows: Sequence[EvalRow], attack: str = "", markdown: bool = False) -> str:
    """A table with one line per row: model, clean accuracy, robust accuracy per eps (in %)."""
    eps_keys = sorted({k for r in rows for k in r.robust}, key=float)
    header = ["model", "clean %"] + [f"{attack} eps={k} %".strip() for k in eps_keys]
    lines = [
        [r.model, f"{100 * r.clean:.2f}"]
        + [f"{100 * r.robust[k]:.2f}" if k in r.robust else "-" for k in eps_keys]
        for r in rows
    ]
    return format_table(header, lines, markdown)


def format_table(
    header: Sequence[str], lines: Sequence[Sequence[str]], markdown: bool = False
) -> str:
    """Align columns; with ``markdown=True`` emit a pipe table."""
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule] + [fmt.format(*line) for line in lines])


def write_json(path: str | os.PathLike, result: dict) -> Path:
    """Write ``result`` as indented JSON, atomically."""
    path = Path(path)
    text = json.dumps(
        result,
        indent=2,
        default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o),
    )
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path
