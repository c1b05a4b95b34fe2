"""Option parsers shared by the commands."""

from __future__ import annotations

import click
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import write_json
from convertsnn.numbers import parse_number, parse_number_list  # noqa: F401  (re-exported)
from convertsnn.snn.compiled import RUNTIMES
from convertsnn.snn.network import LAYOUTS


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


runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="eager",
    show_default=True,
    help="compiled runs each spiking layer's T steps as one torch.compile kernel per direction "
    "(same spikes, faster after seconds of compiling per kernel; needs a C++ compiler on CPU; "
    "docs/performance.md says when it pays).",
)


LAYOUT_HELP = (
    "channels_last stores convolution weights and feature maps channels-last (1.15x faster for "
    "the CPU ResNet-20 with --runtime compiled, not for every network; convolutions round "
    "differently, so a spike may rarely differ; docs/performance.md)"
)
layout_option = click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="nchw",
    show_default=True,
    help=f"{LAYOUT_HELP}.",
)


def write_json_out(path: str | None, document: dict) -> None:
    """Write ``document`` to the ``--out`` JSON file when one was given, and say so."""
    if path:
        write_json(path, document)
        click.echo(f"wrote {path}")
