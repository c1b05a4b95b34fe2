"""``convertsnn export``: an SNN file as ONNX (unrolled over T) or NIR, optionally checked."""

from __future__ import annotations

import time
from pathlib import Path

import click

from convertsnn.cli.images import model_images
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import check_timesteps
from convertsnn.snn.serialize import check_writable, load_snn
from convertsnn.zoo import resolve_model_file

TOLERANCE = 1e-4  # largest logit difference counted as agreement
# A deep SNN's membrane can land within float rounding of its threshold; onnxruntime sums a
# convolution in another order than torch, so such a spike may flip (docs/export.md).
MIN_AGREEING = 0.99


@click.command("export")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "nir"]), required=True)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output file.")
@click.option(
    "--timesteps",
    "-T",
    default=None,
    type=int,
    help="ONNX: steps to unroll (default: the model's T).",
)
@click.option(
    "--check",
    "check_data",
    default=None,
    help="Images (dataset name or .npz, test split) to check the exported file on: ONNX in "
    f"onnxruntime (logits within {TOLERANCE:g} on at least 99% of the images; a dithered "
    "model's file fed convertsnn's random draws); NIR read back "
    "by convertsnn "
    "and, if installed, simulated by Sinabs.",
)
@click.option("--check-images", default=32, show_default=True, type=int, help="Images to check.")
@click.option(
    "--dither",
    default=None,
    type=float,
    help="Export with every neuron's random initial membrane set to this half-width (0: the "
    "deterministic view of a dithered model, for hardware without a random source or for NIR; "
    "default: the model's).",
)
@click.option(
    "--v-init",
    type=click.Choice(["bias", "drop"]),
    default="bias",
    show_default=True,
    help="NIR: the initial membrane v_init*theta, which NIR cannot hold, spread over the T steps "
    "as extra bias (approximate) or dropped (membranes start at 0).",
)
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
def command(
    model_file, fmt, out, timesteps, check_data, check_images, dither, v_init, data_dir
) -> None:
    """Export the SNN in MODEL_FILE (or zoo:NAME) as ONNX or NIR (docs/export.md)."""
    if timesteps is not None:
        check_timesteps(timesteps, "--timesteps")
    if check_images < 1:
        raise ConvertSNNError(f"--check-images must be at least 1, got {check_images}")
    if timesteps is not None and fmt == "nir":
        raise ConvertSNNError("--timesteps is for ONNX; a NIR graph does not fix the steps")
    check_writable(out)
    snn = load_snn(resolve_model_file(model_file))
    if dither is not None:
        snn.set_dither(dither)
    images = labels = None
    if check_data:  # check the data before the export, so bad data fails fast
        images, labels, _ = model_images(snn, check_data, check_images, data_dir)
    start = time.perf_counter()
    if fmt == "onnx":
        from convertsnn.export.onnx import export_onnx

        path = export_onnx(snn, out, timesteps)
        notes = []
    else:
        from convertsnn.export.nir import export_nir

        path, notes = export_nir(snn, out, v_init)
    seconds = time.perf_counter() - start
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {seconds:.1f} s)")
    for note in notes:
        click.echo(f"note: {note}")
    if images is not None:
        _check(snn, fmt, path, images, labels, timesteps)


def _agreement(logits, reference) -> str:
    per_image = (logits - reference).abs().amax(1)
    within = float((per_image <= TOLERANCE).float().mean())
    same = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    return (
        f"max |logit diff| {float(per_image.max()):.2e}, {100 * within:.1f}% of images within "
        f"{TOLERANCE:g}, predictions agree on {100 * same:.1f}%"
    )


def _check(snn, fmt: str, path: Path, images, labels, timesteps: int | None) -> None:
    import torch

    if fmt == "onnx":
        if timesteps:
            snn.timesteps = timesteps
        if snn.stochastic:
            _check_random_onnx(snn, path, images, timesteps)
        else:
            _check_onnx(snn, path, images)
        return
    import nir

    from convertsnn.export.consumers import compare, graph_reference, run_sinabs
    from convertsnn.export.nir_import import read_nir

    with torch.no_grad():
        reference = snn(images)
        back = read_nir(path)(images)
    accuracy = [float((x.argmax(1) == labels).float().mean()) for x in (reference, back)]
    click.echo(
        f"read back by convertsnn vs the model on {len(images)} images: "
        f"{_agreement(back, reference)}; accuracy {100 * accuracy[0]:.1f}% -> {100 * accuracy[1]:.1f}%"
    )
    graph = nir.read(str(path))
    try:
        consumer = run_sinabs(graph, images, snn.timesteps)
    except ConvertSNNError as err:
        click.echo(f"Sinabs check skipped: {err}")
        return
    result = compare(graph_reference(graph, images), consumer)
    click.echo(
        f"Sinabs vs convertsnn running the NIR graph: max |logit diff| "
        f"{result['max_abs_logit_diff']:.2e}, predictions agree on "
        f"{100 * result['prediction_agreement']:.1f}%, largest relative spike-count difference of "
        f"a layer {result['max_rel_spike_count_diff']:.2e}"
    )


def _check_onnx(snn, path: Path, images) -> None:
    """Logits of onnxruntime against convertsnn's on ``images``."""
    import torch

    from convertsnn.export.onnx import onnx_logits

    with torch.no_grad():
        reference = snn(images)
    _compare(onnx_logits(path, images), reference, f"{len(images)} images")


def _compare(logits, reference, what: str) -> None:
    """Print the agreement; refused below :data:`MIN_AGREEING` of the images within tolerance."""
    click.echo(f"onnxruntime vs convertsnn on {what}: {_agreement(logits, reference)}")
    within = float(((logits - reference).abs().amax(1) <= TOLERANCE).float().mean())
    if within < MIN_AGREEING:
        raise ConvertSNNError(
            f"the ONNX file differs from convertsnn by more than {TOLERANCE:g} on "
            f"{100 * (1 - within):.1f}% of the images"
        )


def _check_random_onnx(snn, path: Path, images, timesteps: int | None) -> None:
    """A dithered model: the file's draws replaced by the ones convertsnn makes (same seed), so
    the logits compare exactly; then two runs of the file itself must differ."""
    import torch

    from convertsnn.export.onnx import OnnxModel, onnx_logits_with_draws, unrolled_draws

    torch.manual_seed(0)
    with torch.no_grad():
        reference = snn(images)
    torch.manual_seed(0)
    logits = onnx_logits_with_draws(path, images, unrolled_draws(snn, images, timesteps))
    _compare(logits, reference, f"{len(images)} images, the same random draws in both")
    exported = OnnxModel(path)
    if torch.equal(exported(images), exported(images)):
        raise ConvertSNNError("the random ONNX file gave the same logits on two runs")
    click.echo("two runs of the file draw differently, as the model does")
