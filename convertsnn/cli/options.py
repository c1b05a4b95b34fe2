"""Option parsers shared by the commands."""

from __future__ import annotations

import math

import click
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import write_json


def parse_number(text: str, what: str) -> float:
    """``"0.1"``, ``"8/255"`` or ``"0.5/255"`` to a float."""
    try:
        numerator, _, denominator = text.strip().partition("/")
        value = float(numerator) / float(denominator or "1")
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    except (ValueError, ZeroDivisionError):
        raise ConvertSNNError(
            f"{what} '{text}' is not a number (write e.g. 0.1 or 8/255)"
        ) from None


def parse_number_list(text: str, what: str) -> list[float]:
    """``"2/255,8/255"`` to floats (at least one)."""
    values = [parse_number(part, what) for part in text.split(",") if part.strip()]
    if not values:
        raise ConvertSNNError(f"{what} is empty; give comma-separated numbers like 2/255,8/255")
    return values


def parse_int_list(text: str, what: str) -> list[int]:
    """``"4,8,16"`` to positive ints."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConvertSNNError(f"{what} must be positive integers like 4,8,16; got '{part}'")
        values.append(int(part))
    if not values:
        raise ConvertSNNError(f"{what} is empty")
    return values


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvertSNNError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvertSNNError("--device cuda was asked for, but no CUDA GPU is available")
    return device


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, cuda:N, or auto (CUDA when available).",
)


def write_json_out(path: str | None, document: dict) -> None:
    """Write ``document`` to the ``--out`` JSON file when one was given, and say so."""
    if path:
        write_json(path, document)
        click.echo(f"wrote {path}")
