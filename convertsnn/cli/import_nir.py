"""``convertsnn import``: a NIR file back into a convertsnn SNN file."""

from __future__ import annotations

import click

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import save_snn


@click.command("import")
@click.argument("nir_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="SNN file.")
@click.option(
    "--timesteps",
    "-T",
    default=None,
    type=int,
    help="Steps to run (default: from the graph metadata written by `convertsnn export`).",
)
@click.option(
    "--reset",
    type=click.Choice(["zero", "subtract"]),
    default=None,
    help="Reset of every neuron (default: from the graph metadata written by `convertsnn "
    "export`, else zero as NIR specifies; Sinabs files mean subtract).",
)
def command(nir_file, out, timesteps, reset) -> None:
    """Read the NIR graph in NIR_FILE into an SNN file (docs/export.md lists the nodes)."""
    from convertsnn.export.nir_import import read_nir

    if timesteps is not None and timesteps < 1:
        raise ConvertSNNError(f"--timesteps must be at least 1, got {timesteps}")
    snn = read_nir(nir_file, timesteps, reset)
    path = save_snn(snn, out)
    neurons = sum(1 for _ in snn.neurons())
    click.echo(f"wrote {path} ({neurons} spiking layers, T={snn.timesteps})")
