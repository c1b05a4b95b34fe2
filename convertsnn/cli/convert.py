"""``convertsnn convert``: ANN source -> calibrated SNN file."""

from __future__ import annotations

from pathlib import Path

import click
from torch.utils.data import DataLoader

from convertsnn.cli.options import (
    device_option,
    parse_int_list,
    parse_number_list,
    resolve_device,
    runtime_option,
)
from convertsnn.convert import convert
from convertsnn.convert.calibration import list_calibrations
from convertsnn.convert.calibration.auto import MIN_IMAGES as AUTO_MIN_IMAGES
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import Preprocessing, load_ann, source_stem
from convertsnn.snn.network import check_timesteps
from convertsnn.snn.neurons import check_burst, check_dither, check_population
from convertsnn.snn.serialize import check_writable, save_snn
from convertsnn.snn.surrogate import parse_surrogate

# the defaults follow the measurements (docs/conversion.md, "Deep ResNets without training"):
# with data, model selection over bnmse, mse, channelwise, delay:biascal:mse (biascal:mse with
# the delayed readout, best at every T measured) and the same from thresholds x 0.7 (ahead on
# deep ResNets at T >= 8); below auto's minimum, biascal:mse
# (too few images to choose a readout delay on); without data, bnmse
DATA_CALIBRATION = "auto"
FEW_IMAGES_CALIBRATION = "biascal:mse"
NO_DATA_CALIBRATION = "bnmse"


def default_calibration(images: int | None) -> str:
    """The calibration used when ``--calibration`` is not given, for ``images`` calibration
    images (None: no data)."""
    if images is None:
        return NO_DATA_CALIBRATION
    return DATA_CALIBRATION if images >= AUTO_MIN_IMAGES else FEW_IMAGES_CALIBRATION


def _preprocessing(
    mean: str | None, std: str | None, input_size: str | None
) -> Preprocessing | None:
    if mean is None and std is None and input_size is None:
        return None
    if (mean is None) != (std is None):
        raise ConvertSNNError(
            "give --mean and --std together (one value per channel each), or neither"
        )
    return Preprocessing(
        mean=tuple(parse_number_list(mean, "--mean")) if mean else None,
        std=tuple(parse_number_list(std, "--std")) if std else None,
        input_size=tuple(parse_int_list(input_size, "--input-size")) if input_size else None,
    )


@click.command("convert")
@click.argument("source")
@click.option(
    "--timesteps", "-T", default=8, show_default=True, type=int, help="Simulation steps T."
)
@click.option(
    "--calib",
    "calib_data",
    help="Calibration images: dataset name or .npz (train split by default).",
)
@click.option(
    "--calib-images",
    default=1024,
    show_default=True,
    type=int,
    help="How many calibration images (auto scores its candidates on a quarter, at most 256).",
)
@click.option(
    "--calibration",
    help=f"Threshold method: {', '.join(list_calibrations())} (NAME or NAME:ARG) "
    f"[default: {DATA_CALIBRATION} with --calib ({FEW_IMAGES_CALIBRATION} below "
    f"{AUTO_MIN_IMAGES} images), {NO_DATA_CALIBRATION} (data-free) without]; on deep networks at "
    "T <= 16, readoutcal (the classifier refitted to the ANN's logits) measured best of the "
    "methods that take seconds (docs/conversion.md).",
)
@click.option("--neuron", type=click.Choice(["if", "lif"]), default="if", show_default=True)
@click.option("--leak", default=1.0, show_default=True, type=float, help="Membrane leak for LIF.")
@click.option(
    "--reset", type=click.Choice(["subtract", "zero"]), default="subtract", show_default=True
)
@click.option(
    "--v-init", default=0.5, show_default=True, type=float, help="Initial membrane / threshold."
)
@click.option(
    "--surrogate", default="triangle:1", show_default=True, help="Surrogate gradient FAMILY[:G]."
)
@click.option(
    "--signed-spikes",
    is_flag=True,
    help="Signed (ternary) spikes that take back over-firing: a hardware-cost variant, not for "
    "binary-spike hardware (docs/conversion.md).",
)
@click.option(
    "--burst",
    default=1,
    show_default=True,
    type=int,
    help="Most spikes a neuron sends per step (K >= 2: burst neurons, a hardware-cost variant, "
    "not for binary-spike hardware; 1: binary; docs/conversion.md).",
)
@click.option(
    "--population",
    default=1,
    show_default=True,
    type=int,
    help="Binary IF neurons per unit (K >= 2: staggered initial membranes, outputs averaged, "
    "K*T rounding levels at T steps; a hardware-cost variant that binary-spike hardware can run: "
    "K times the neurons and synapses; 1: one neuron; docs/conversion.md).",
)
@click.option(
    "--dither",
    default=0.0,
    show_default=True,
    type=float,
    help="Half-width a of a random initial membrane theta * U[v_init - a, v_init + a] drawn per "
    "input (dithered rounding; the model becomes random and is evaluated with EOT; 0: off; "
    "docs/robustness_loss.md).",
)
@click.option("--arch", help="Architecture of a plain state dict (see `convertsnn models`).")
@click.option("--mean", help="Per-channel input mean, e.g. 0.4914,0.4822,0.4465.")
@click.option("--std", help="Per-channel input std.")
@click.option(
    "--input-size", help="Input size C,H,W (e.g. 3,32,32) when the source leaves it open."
)
@click.option(
    "--weights", type=click.Path(dir_okay=False), help="Local pretrained weights for timm:NAME."
)
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False),
    help="RobustBench model directory for robustbench:DATASET/THREAT/NAME [default: ./models].",
)
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Output file (.safetensors).")
@runtime_option
@device_option
def command(
    source, timesteps, calib_data, calib_images, calibration, neuron, leak, reset, v_init,
    surrogate, signed_spikes, burst, population, dither, arch, mean, std, input_size, weights, model_dir, data_dir, batch_size, out, runtime, device,
) -> None:  # fmt: skip
    """Convert the ANN SOURCE into a spiking network file.

    SOURCE is a .onnx file, a checkpoint (.pt/.pth/.th/.safetensors, with --arch),
    timm:NAME (with --weights FILE) or robustbench:DATASET/THREAT/NAME (with --model-dir).
    """
    check_timesteps(timesteps, "--timesteps")
    if not 0 <= v_init <= 1:
        raise ConvertSNNError(f"--v-init is a fraction of the threshold in [0, 1], got {v_init}")
    if calib_images < 1:
        raise ConvertSNNError(f"--calib-images must be at least 1, got {calib_images}")
    if batch_size < 1:
        raise ConvertSNNError(f"--batch-size must be at least 1, got {batch_size}")
    parse_surrogate(surrogate)
    check_burst(burst, reset, signed_spikes)
    check_dither(dither, v_init)
    check_population(population, reset, signed_spikes, burst, v_init, dither)
    device = resolve_device(device)
    path = Path(out or f"{source_stem(source)}_snn_T{timesteps}.safetensors")
    check_writable(path)
    ann = load_ann(
        source,
        arch=arch,
        preprocessing=_preprocessing(mean, std, input_size),
        weights=weights,
        model_dir=model_dir,
    )
    loader = None
    if calib_data:
        calib = load_dataset(calib_data, split="train", data_dir=data_dir, limit=calib_images)
        ann.preprocessing.input_size = ann.preprocessing.input_size or calib.image_size
        ann.preprocessing.num_classes = ann.preprocessing.num_classes or calib.num_classes
        loader = DataLoader(calib, batch_size=batch_size)
    ann.preprocessing.check()  # mean/std against the channels now known
    data_free_note = calibration is None and not loader
    if calibration is None:
        calibration = default_calibration(len(loader.dataset) if loader else None)
    metadata = ann.metadata()
    metadata["calibration_data"] = (
        {"spec": calib_data, "images": len(loader.dataset)} if loader else None
    )
    snn = convert(
        ann.model, loader, timesteps=timesteps, calibration=calibration, neuron=neuron,
        leak=leak, reset=reset, v_init=v_init, surrogate=surrogate, device=device,
        metadata=metadata, signed=signed_spikes, burst=burst, dither=dither,
        population=population, runtime=runtime,
    )  # fmt: skip
    save_snn(snn, path)
    if data_free_note:
        click.echo(
            f"no --calib data: thresholds estimated without data ({calibration}: BatchNorm "
            "statistics propagated through the weights, searched for T); for higher accuracy "
            f"pass --calib DATA (a few hundred training images; default calibration "
            f"{DATA_CALIBRATION}, see docs/conversion.md), or without data, for a network with "
            "BatchNorm, --calibration synthetic (calibration images synthesised from its "
            "statistics; minutes)"
        )
    click.echo(
        f"converted {source} -> {path}: {sum(1 for _ in snn.neurons())} spiking layers, "
        f"T={timesteps}, calibration {snn.metadata['conversion']['calibration']}"
        + (f", readout {snn.readout}" if snn.readout != "mean" else "")
        + (f", dither {dither:g} (random: evaluate with EOT)" if dither else "")
        + (f", population {population} (a hardware-cost variant)" if population > 1 else "")
    )
