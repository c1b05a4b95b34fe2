"""``convertsnn models``: the architectures a plain state dict can be loaded into."""

from __future__ import annotations

import click

from convertsnn.models import list_models


@click.command("models")
def command() -> None:
    """List the architecture names accepted by `--arch`."""
    for name in list_models():
        click.echo(name)
