"""``convertsnn demo``: the embedded default, offline.

A small PGD-trained MNIST CNN shipped in ``convertsnn/assets`` is converted into an IF SNN
(calibrated on 256 shipped training images) and evaluated on shipped real MNIST test images:
clean and white-box PGD accuracy (BPTT through the surrogate) at several T, next to the ANN;
then the ``quick`` attack suite (docs/evaluation.md) on the first of those images, for the ANN
and the SNN at one T: PGD through one surrogate can make the SNN look more robust than its ANN,
the suite's per-sample worst case over gradient modes gives the honest number.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
from torch.utils.data import DataLoader

from convertsnn.attacks import PGD
from convertsnn.cli.options import (
    device_option,
    parse_int_list,
    parse_number,
    resolve_device,
    write_json_out,
)
from convertsnn.convert import convert
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import rows_table
from convertsnn.eval.robustness import (
    EvalRow,
    eps_key,
    evaluate_over_timesteps,
    evaluate_robustness,
)
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import QUICK
from convertsnn.importers import load_ann
from convertsnn.snn.network import check_timesteps
from convertsnn.snn.serialize import check_writable, save_snn

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_MODEL = ASSETS / "mnist_cnn_pgd.safetensors"
DEMO_DATA = ASSETS / "mnist_sample.npz"
SUITE_IMAGES = 100


@click.command("demo")
@click.option(
    "--images", default=300, show_default=True, type=int, help="Test images to use (max 1000)."
)
@click.option(
    "--timesteps", "-T", default="4,8,16", show_default=True, help="Comma-separated T values."
)
@click.option("--eps", default="0.1", show_default=True, help="L-inf radius of the PGD attack.")
@click.option("--steps", default=20, show_default=True, type=int, help="PGD steps.")
@click.option(
    "--suite-images",
    default=SUITE_IMAGES,
    show_default=True,
    type=int,
    help="Test images for the quick suite (the first of --images; 0: skip it).",
)
@click.option(
    "--suite-timesteps", default=8, show_default=True, type=int, help="T of the SNN in the suite."
)
@click.option("--calibration", default="percentile:99.99", show_default=True)
@click.option("--save", type=click.Path(dir_okay=False), help="Also write the converted SNN here.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--seed", default=0, show_default=True, type=int)
@device_option
def command(
    images, timesteps, eps, steps, suite_images, suite_timesteps, calibration, save, out, seed,
    device,
) -> None:  # fmt: skip
    """Convert the shipped robust MNIST CNN to an SNN and attack it (runs offline)."""
    if not 1 <= images <= 1000:
        raise ConvertSNNError(f"--images must be between 1 and 1000, got {images}")
    if not 0 <= suite_images <= images:
        raise ConvertSNNError(
            f"--suite-images must be between 0 and --images ({images}), got {suite_images}"
        )
    check_timesteps(suite_timesteps, "--suite-timesteps")
    torch.manual_seed(seed)
    device = resolve_device(device)
    ts = parse_int_list(timesteps, "--timesteps")
    radius = parse_number(eps, "--eps")
    for path in (save, out):
        if path:
            check_writable(path)
    ann = load_ann(str(DEMO_MODEL))
    calib = DataLoader(load_dataset(str(DEMO_DATA), split="train"), batch_size=128)
    test = load_dataset(str(DEMO_DATA), split="test", limit=images)
    click.echo(
        f"demo: PGD-trained MNIST CNN ({DEMO_MODEL.name}) -> IF SNN, calibration {calibration} "
        f"on 256 training images; {images} real MNIST test images; PGD-{steps} at eps {radius:g} "
        "with BPTT through the triangle surrogate"
    )
    metadata = ann.metadata() | {"calibration_data": {"spec": "demo sample", "images": 256}}
    snn = convert(ann.model, calib, timesteps=max(ts), calibration=calibration, device=device,
                  metadata=metadata)  # fmt: skip
    rows = evaluate_over_timesteps(
        snn,
        DataLoader(test, batch_size=250),
        ts,
        [radius],
        lambda model, e: PGD(model, e, steps=steps),
        device=device,
    )
    click.echo(rows_table(rows, f"PGD-{steps}"))
    suite_rows = []
    if suite_images:
        x, y = (t[:suite_images].to(device) for t in test.tensors())
        suite_rows = evaluate_robustness(
            snn, x, y, [suite_timesteps], [radius], "quick", EvalSettings(sanity=False)
        )
        click.echo(
            f"\nquick suite, per-sample worst case, on the first {suite_images} of these images: "
            f"{QUICK.description}"
        )
        click.echo(rows_table(suite_rows, "quick"))
        click.echo(suite_verdict(rows, suite_rows, radius))
    click.echo(
        "note: PGD through one surrogate is an upper bound for an SNN (the surrogate can hide "
        "gradients); report suite numbers: `convertsnn evaluate "
        f"zoo:mnist_cnn_pgd_snn_t8 --data mnist --suite quick --eps {radius:g}` (all "
        "images, with sanity checks)"
    )
    click.echo(
        f"next (runs offline): `convertsnn convert {DEMO_MODEL} --calib mnist -o "
        "snn.safetensors`, then `convertsnn evaluate snn.safetensors --data mnist --suite quick "
        "--eps 0.1`; your own model: `convertsnn convert CHECKPOINT --calib DATA`"
    )
    if save:
        save_snn(snn, save)
        click.echo(f"wrote {save}")
    write_json_out(
        out,
        {
            "demo": True, "images": images, "eps": radius, "steps": steps, "rows": rows,
            "suite": {"name": "quick", "images": suite_images, "rows": suite_rows},
        },
    )  # fmt: skip


def suite_verdict(pgd_rows: list[EvalRow], suite_rows: list[EvalRow], eps: float) -> str:
    """One line: the SNN's robust accuracy minus its ANN's under PGD and under the suite, and
    what the difference means."""
    key = eps_key(eps)
    ann, snn = suite_rows[0], suite_rows[-1]
    suite_gap = 100 * (snn.robust[key] - ann.robust[key])
    pgd = {r.model: r.robust[key] for r in pgd_rows}
    if snn.model not in pgd:
        return f"{snn.model} minus ANN under the quick suite: {suite_gap:+.1f} points"
    pgd_gap = 100 * (pgd[snn.model] - pgd[ann.model])
    text = (
        f"{snn.model} minus ANN: {pgd_gap:+.1f} points under PGD, {suite_gap:+.1f} under the "
        "quick suite"
    )
    if pgd_gap - suite_gap > 1.0:
        return text + (
            f": PGD through one surrogate flatters the SNN by {pgd_gap - suite_gap:.1f} points "
            "(gradients the surrogate hides, not robustness); compare models under a suite"
        )
    return text + ": here PGD through the surrogate does not flatter the SNN; still compare "
    "models under a suite"
