"""``convertsnn export``: an SNN file as ONNX (unrolled over T) or NIR, optionally checked."""

from __future__ import annotations

import time
from pathlib import Path

import click

from convertsnn.cli.images import model_images
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.serialize import load_snn
from convertsnn.zoo import resolve_model_file

ONNX_TOLERANCE = 1e-4


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
    f"onnxruntime (max |logit difference| <= {ONNX_TOLERANCE:g}); NIR read back by convertsnn "
    "and, if installed, simulated by Sinabs.",
)
@click.option("--check-images", default=32, show_default=True, type=int, help="Images to check.")
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
def command(model_file, fmt, out, timesteps, check_data, check_images, data_dir) -> None:
    """Export the SNN in MODEL_FILE (or zoo:NAME) as ONNX or NIR (docs/export.md)."""
    if timesteps is not None and timesteps < 1:
        raise ConvertSNNError(f"--timesteps must be at least 1, got {timesteps}")
    if timesteps is not None and fmt == "nir":
        raise ConvertSNNError("--timesteps is for ONNX; a NIR graph does not fix the steps")
    snn = load_snn(resolve_model_file(model_file))
    images = None
    if check_data:  # check the data before the export, so bad data fails fast
        images, _, _ = model_images(snn, check_data, check_images, data_dir)
    start = time.perf_counter()
    if fmt == "onnx":
        from convertsnn.export.onnx import export_onnx

        path = export_onnx(snn, out, timesteps)
        notes = []
    else:
        from convertsnn.export.nir import export_nir

        path, notes = export_nir(snn, out)
    seconds = time.perf_counter() - start
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {seconds:.1f} s)")
    for note in notes:
        click.echo(f"note: {note}")
    if images is not None:
        _check(snn, fmt, path, images, timesteps)


def _check(snn, fmt: str, path: Path, images, timesteps: int | None) -> None:
    import torch

    if fmt == "onnx":
        from convertsnn.export.onnx import onnx_logits

        if timesteps:
            snn.timesteps = timesteps
        with torch.no_grad():
            reference = snn(images)
        difference = float((onnx_logits(path, images) - reference).abs().max())
        click.echo(
            f"onnxruntime vs convertsnn on {len(images)} images: max |diff| {difference:.2e}"
        )
        if not difference <= ONNX_TOLERANCE:
            raise ConvertSNNError(
                f"the ONNX file differs from convertsnn by {difference:.2e} > {ONNX_TOLERANCE:g}"
            )
        return
    import nir

    from convertsnn.export.consumers import compare, convertsnn_reference, run_sinabs
    from convertsnn.export.nir_import import read_nir

    with torch.no_grad():
        back = read_nir(path)(images)
        difference = float((back - snn(images)).abs().max())
    click.echo(
        f"read back by convertsnn on {len(images)} images: max |logit diff| {difference:.2e}"
    )
    try:
        result = compare(
            convertsnn_reference(snn, images),
            run_sinabs(nir.read(str(path)), images, snn.timesteps),
        )
    except ConvertSNNError as err:
        click.echo(f"Sinabs check skipped: {err}")
        return
    click.echo(
        f"Sinabs vs convertsnn (v_init=0) on {len(images)} images: max |logit diff| "
        f"{result['max_abs_logit_diff']:.2e}, predictions agree {100 * result['prediction_agreement']:.1f}%, "
        f"max relative spike-count difference per layer {result['max_rel_spike_count_diff']:.2e}"
    )
