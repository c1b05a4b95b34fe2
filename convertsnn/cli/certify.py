"""``convertsnn certify``: certified L2 accuracy by randomised smoothing (Cohen et al. 2019)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from convertsnn.cli.options import (
    device_option,
    parse_number,
    parse_number_list,
    resolve_device,
    write_json_out,
)
from convertsnn.data import check_dataset_fits, load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.certify import (
    Certificate,
    accuracy_curve,
    certify_dataset,
    check_settings,
    effective_sigma,
    largest_radius,
    plot_certified_accuracy,
)
from convertsnn.eval.report import format_table
from convertsnn.eval.state import StateDir
from convertsnn.snn.serialize import atomic_write, check_writable, load_snn, package_versions
from convertsnn.zoo import resolve_model_file

STATE_FILE = "certificates.jsonl"


def read_certificates(path: Path) -> list[Certificate]:
    """Certificates saved one per line; a line cut short by a kill is dropped (and the file
    rewritten without it)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            kept.append(Certificate(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            break
    text = "".join(json.dumps(vars(c)) + "\n" for c in kept)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return kept


def default_radii(sigma: float, n: int, alpha: float) -> list[float]:
    """Eleven radii from 0 to the largest one CERTIFY can return with ``n`` draws."""
    top = largest_radius(sigma, n, alpha)
    return [round(top * i / 10, 4) for i in range(11)]


@click.command("certify")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Test images: dataset name or .npz (test split).")
@click.option("--n0", default=100, show_default=True, help="Draws to select the top class.")
@click.option(
    "--n", "n", default=10_000, show_default=True, help="Draws to estimate its probability."
)
@click.option(
    "--alpha", default="0.001", show_default=True, help="Failure probability of a certificate."
)
@click.option(
    "--sigma", default=None,
    help="Add Gaussian noise of this std (pixels) once per noisy draw (shared by its T steps), before the encoder; needed "
    "for models without a gaussian encoder. Default: only the model's own noise.",
)  # fmt: skip
@click.option(
    "--radii",
    default=None,
    help="L2 radii to report, e.g. 0,0.05,0.1 (default: 11 up to the largest certifiable).",
)
@click.option("--limit", default=None, type=int, help="Certify at most N images.")
@click.option(
    "--skip",
    default=1,
    show_default=True,
    help="Certify every K-th test image (Cohen et al. use 20).",
)
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
@click.option(
    "--batch-size", default=1000, show_default=True, help="Noisy copies per forward pass."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the noise (per image).")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    help="Write settings, curve and certificates as JSON.",
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="Write certified accuracy vs radius as a PNG."
)
@click.option(
    "--resume", type=click.Path(file_okay=False),
    help="State directory: certificates are saved there one by one; a rerun continues.",
)  # fmt: skip
@device_option
def command(
    model_file, data, n0, n, alpha, sigma, radii, limit, skip, data_dir, batch_size, seed, out,
    plot, resume, device,
) -> None:  # fmt: skip
    """Certify the smoothed SNN in MODEL_FILE by randomised smoothing (Cohen et al. 2019).

    The noise is the model's own gaussian:SIGMA encoder (per time step; certified as std
    SIGMA/sqrt(T), see docs/defences.md) plus --sigma, if given. Prints certified accuracy at
    each radius (L2, pixels in [0, 1]).
    """
    import torch

    alpha = parse_number(alpha, "--alpha")
    extra = parse_number(sigma, "--sigma") if sigma is not None else 0.0
    check_settings(n0, n, alpha, batch_size)
    if skip < 1 or (limit is not None and limit < 1):
        raise ConvertSNNError("--skip and --limit must be at least 1")
    for path in (out, plot):
        if path:
            check_writable(path)
    device = resolve_device(device)
    snn = load_snn(resolve_model_file(model_file), device)
    sigma_eff = effective_sigma(snn, extra)
    dataset = load_dataset(data, split="test", data_dir=data_dir)
    check_dataset_fits(dataset, data, snn.input_size, snn.metadata.get("num_classes"))
    indices = list(range(0, len(dataset), skip))[:limit]
    x, y = (t[indices].to(device) for t in dataset.tensors())
    radius_list = (parse_number_list(radii, "--radii") if radii
                   else default_radii(sigma_eff, n, alpha))  # fmt: skip
    settings = {
        "model": str(model_file), "data": dataset.name, "images": len(indices), "skip": skip,
        "encoder": str(snn.encoder), "timesteps": snn.timesteps, "extra_sigma": extra,
        "sigma_effective": sigma_eff, "n0": n0, "n": n, "alpha": alpha, "seed": seed,
    }  # fmt: skip
    done, append = [], None
    if resume:
        StateDir(resume, settings)
        state = Path(resume) / STATE_FILE
        done = read_certificates(state)

        def append(certificate: Certificate) -> None:
            with state.open("a") as handle:
                handle.write(json.dumps(vars(certificate)) + "\n")

    torch.manual_seed(seed)
    start = time.perf_counter()
    certificates = certify_dataset(snn, x, y, n0, n, alpha, extra, batch_size, seed, indices,
                                   done, append)  # fmt: skip
    seconds = time.perf_counter() - start
    curve = accuracy_curve(certificates, radius_list)
    abstained = sum(c.prediction < 0 for c in certificates)
    click.echo(
        f"{model_file}: {len(certificates)} images of {dataset.name}, encoder {snn.encoder}, "
        f"T={snn.timesteps}, sigma_eff {sigma_eff:.4g}, n0={n0}, n={n}, alpha={alpha:g}"
    )
    click.echo(f"abstained on {abstained}; {seconds:.0f} s")
    lines = [(f"{r:.4g}", f"{100 * a:.1f}") for r, a in curve]
    click.echo(format_table(["L2 radius", "certified accuracy %"], lines))
    document = {
        **settings, "radii": radius_list, "seconds": seconds,
        "curve": [{"radius": r, "certified_accuracy": a} for r, a in curve],
        "abstained": abstained, "certificates": [vars(c) for c in certificates],
        "versions": package_versions(),
    }  # fmt: skip
    write_json_out(out, document)
    if plot:
        plot_certified_accuracy({Path(model_file).name: certificates}, plot,
                                f"sigma_eff={sigma_eff:.3g}, n={n}, alpha={alpha:g}")  # fmt: skip
        click.echo(f"wrote {plot}")
