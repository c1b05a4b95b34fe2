"""``convertsnn profile``: firing rates, synaptic operations and energy of an SNN file."""

from __future__ import annotations

import click

from convertsnn.cli.images import model_images
from convertsnn.cli.options import device_option, parse_number, resolve_device
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.energy import E_AC_PJ, E_MAC_PJ
from convertsnn.snn.serialize import load_snn
from convertsnn.zoo import resolve_model_file


@click.command("profile")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Images: dataset name or .npz (test split).")
@click.option("--limit", default=100, show_default=True, type=int, help="Use the first N images.")
@click.option("--timesteps", "-T", default=None, type=int, help="Steps (default: the model's T).")
@click.option(
    "--e-mac",
    default=str(E_MAC_PJ),
    show_default=True,
    help="Energy of one multiply-accumulate in pJ (45 nm fp32, Horowitz 2014).",
)
@click.option(
    "--e-ac",
    default=str(E_AC_PJ),
    show_default=True,
    help="Energy of one accumulate in pJ (45 nm fp32, Horowitz 2014).",
)
@click.option("--batch-size", default=100, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the profile as JSON.")
@click.option(
    "--report",
    type=click.Path(file_okay=False),
    help="Write profile.md, profile.json and PNG plots here.",
)
@device_option
def command(
    model_file, data, limit, timesteps, e_mac, e_ac, batch_size, data_dir, out, report, device
) -> None:
    """Spikes, synaptic operations vs the ANN's MACs, and energy of MODEL_FILE (or zoo:NAME)."""
    from convertsnn.cli.options import write_json_out
    from convertsnn.eval.energy import profile_snn
    from convertsnn.eval.energy_report import profile_tables, write_profile_report

    e_mac_pj, e_ac_pj = parse_number(e_mac, "--e-mac"), parse_number(e_ac, "--e-ac")
    if batch_size < 1:
        raise ConvertSNNError(f"--batch-size must be at least 1, got {batch_size}")
    snn = load_snn(resolve_model_file(model_file), resolve_device(device))
    if timesteps is not None:
        snn.timesteps = timesteps
    images, labels, name = model_images(snn, data, limit, data_dir)
    profile = profile_snn(
        snn, images, labels, batch_size, e_mac_pj, e_ac_pj, model=str(model_file), data=name,
    )  # fmt: skip
    click.echo(profile_tables(profile))
    write_json_out(out, profile.summary())
    if report:
        written = write_profile_report(report, profile)
        click.echo(f"wrote {', '.join(str(p) for p in written)}")
