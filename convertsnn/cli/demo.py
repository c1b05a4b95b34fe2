"""``convertsnn demo``: the embedded default: PGD-trained MNIST CNN -> SNN, evaluated."""

from __future__ import annotations

import click


@click.command("demo")
def command() -> None:
    """Placeholder while the demo assets are built."""
