"""``convertsnn evaluate``: clean and adversarial accuracy of an SNN file over timesteps."""

from __future__ import annotations

import click
from torch.utils.data import DataLoader

from convertsnn.attacks import ATTACKS
from convertsnn.cli.options import (
    device_option,
    parse_int_list,
    parse_number_list,
    resolve_device,
)
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import rows_table, write_json
from convertsnn.eval.robustness import evaluate_over_timesteps
from convertsnn.snn.serialize import load_snn


def attack_factory(name: str, steps: int, alpha: float | None, restarts: int):
    """A function ``(model, eps) -> Attack`` for the CLI's attack options."""
    if name not in ATTACKS:
        raise ConvertSNNError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}")

    def make(model, eps):
        if name == "pgd":
            return ATTACKS[name](model, eps, steps=steps, alpha=alpha, restarts=restarts)
        return ATTACKS[name](model, eps)

    return make


@click.command("evaluate")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option(
    "--data", required=True, help="Test images: dataset name or .npz (test split by default)."
)
@click.option(
    "--timesteps", "-T", default=None, help="Comma-separated T values (default: the model's T)."
)
@click.option(
    "--attack", default="none", show_default=True, help="none, pgd or fgsm (white-box, BPTT)."
)
@click.option(
    "--eps",
    default="8/255",
    show_default=True,
    help="Comma-separated L-inf radii, e.g. 2/255,8/255.",
)
@click.option("--steps", default=20, show_default=True, type=int, help="PGD steps.")
@click.option("--alpha", default=None, help="PGD step size (default 2.5*eps/steps).")
@click.option("--restarts", default=1, show_default=True, type=int, help="PGD restarts.")
@click.option(
    "--surrogate", default=None, help="Surrogate for the attack's gradients (default: the model's)."
)
@click.option("--attack-timesteps", default=None, help="Attack only at these T (default: every T).")
@click.option(
    "--ann/--no-ann",
    default=True,
    show_default=True,
    help="Also evaluate the source ANN (same weights, ReLU).",
)
@click.option("--limit", default=None, type=int, help="Use only the first N test images.")
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for random starts.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@device_option
def command(
    model_file, data, timesteps, attack, eps, steps, alpha, restarts, surrogate,
    attack_timesteps, ann, limit, data_dir, batch_size, seed, out, device,
) -> None:  # fmt: skip
    """Evaluate the SNN in MODEL_FILE (written by `convertsnn convert`)."""
    import torch

    torch.manual_seed(seed)
    device = resolve_device(device)
    snn = load_snn(model_file, device)
    ts = parse_int_list(timesteps, "--timesteps") if timesteps else [snn.timesteps]
    dataset = load_dataset(data, split="test", data_dir=data_dir, limit=limit)
    if snn.input_size and dataset.image_size != snn.input_size:
        raise ConvertSNNError(
            f"images in {data} are {dataset.image_size} but the model expects {snn.input_size}"
        )
    loader = DataLoader(dataset, batch_size=batch_size)
    make_attack, eps_values = None, []
    if attack != "none":
        eps_values = parse_number_list(eps, "--eps")
        step_size = parse_number_list(alpha, "--alpha")[0] if alpha else None
        make_attack = attack_factory(attack, steps, step_size, restarts)
    rows = evaluate_over_timesteps(
        snn, loader, ts, eps_values, make_attack, include_ann=ann,
        attack_timesteps=parse_int_list(attack_timesteps, "--attack-timesteps") if attack_timesteps else None,
        surrogate=surrogate, device=device,
    )  # fmt: skip
    label = f"{attack}-{steps}" if attack == "pgd" else attack
    click.echo(f"{model_file} on {len(dataset)} images of {dataset.name}")
    click.echo(rows_table(rows, label if attack != "none" else ""))
    if out:
        write_json(
            out,
            {
                "model": str(model_file),
                "data": dataset.name,
                "images": len(dataset),
                "attack": {"name": attack, "steps": steps, "alpha": alpha, "restarts": restarts,
                           "surrogate": surrogate, "eps": eps_values},
                "rows": rows,
            },
        )  # fmt: skip
        click.echo(f"wrote {out}")
