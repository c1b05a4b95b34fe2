"""``convertsnn finetune``: robust finetuning of a converted SNN (resumable, torchrun-ready).

The options shared with ``convertsnn train`` live here too (:func:`run_options`,
:func:`run_and_report`). Settings come from a YAML recipe (``--config``) and/or flags; a flag
given on the command line wins over the recipe.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import click

from convertsnn.cli.options import LAYOUT_HELP, write_json_out
from convertsnn.finetune import FinetuneConfig, FitResult, RunConfig, finetune, load_recipe
from convertsnn.finetune.config import (
    AUGMENTATIONS,
    LAYOUT_CHOICES,
    MEMORY_CHOICES,
    NEURON_CHOICES,
    OPTIMIZERS,
    PARAMETER_SETS,
    RUNTIME_CHOICES,
    SCHEDULES,
    SELECTIONS,
)
from convertsnn.objectives import list_objectives, list_regularizers
from convertsnn.objectives.attack_gradient import PICKS

# (flag, field, click type, help); the default shown is the config class's.
_SHARED = [
    ("--data", "data", str, "Training images: dataset name or .npz (train split)."),
    ("--data-dir", "data_dir", str, "Where torchvision datasets are stored."),
    ("--train-images", "train_images", int, "Use only the first N training images."),
    ("--val-fraction", "val_fraction", float, "Share of the training images held out for model selection."),
    ("--val-attack-steps", "val_attack_steps", int, "PGD steps for the held-out robust accuracy."),
    ("--select-by", "select_by", str, f"Best epoch by held-out robust accuracy under {' or '.join(SELECTIONS)} (quick: the quick suite, docs/evaluation.md; PGD is still logged)."),
    ("--select-images", "select_images", int, "With --select-by quick: attack only the first N held-out images (default: all)."),
    ("--objective", "objective", str, f"Training objective: {', '.join(list_objectives())}."),
    ("--eps", "eps", str, "L-inf radius of the inner attack, e.g. 2/255."),
    ("--alpha", "alpha", str, "Inner attack step size (objective's default if unset)."),
    ("--attack-steps", "attack_steps", int, "Inner attack steps (objective's default if unset)."),
    ("--beta", "beta", str, "Weight of the robust term (TRADES 6, MART 4, trades-rfgsm 2, rssnn rho 1)."),
    ("--regularizer", "regularizers", str, "Extra loss term NAME[:WEIGHT] (repeatable): {}."),
    ("--weight-projection", "weight_projection", float, "Parseval weight projection beta after each step (RSSNN AT+Reg: 5e-4; 0 = off)."),
    ("--epochs", "epochs", int, "Training epochs."),
    ("--batch-size", "batch_size", int, "Global batch size (split over torchrun processes)."),
    ("--optimizer", "optimizer", str, f"{' or '.join(OPTIMIZERS)}."),
    ("--lr", "lr", float, "Learning rate."),
    ("--momentum", "momentum", float, "SGD momentum."),
    ("--weight-decay", "weight_decay", float, "Weight decay."),
    ("--schedule", "schedule", str, f"LR schedule: {', '.join(SCHEDULES)} (cosine-epoch steps once an epoch)."),
    ("--augment", "augment", str, f"Augmentation: {', '.join(AUGMENTATIONS)}."),
    ("--seed", "seed", int, "Seed for data order, attacks and augmentation."),
    ("--out-dir", "out_dir", str, "Run directory: checkpoint, best/last model files, logs."),
    ("--checkpoint-every", "checkpoint_every", int, "Also checkpoint every N steps (0: each epoch only)."),
    ("--log-every", "log_every", int, "Log a step record every N steps (0: epochs only)."),
    ("--device", "device", str, "cpu, cuda, cuda:N, or auto (CUDA when available)."),
]  # fmt: skip

_FLAGS = [
    ("--random-start/--no-random-start", "random_start", "Random start of the inner attack."),
    ("--resume/--no-resume", "resume", "Continue the run in --out-dir from its checkpoint."),
    ("--tensorboard/--no-tensorboard", "tensorboard", "Also write TensorBoard scalars."),
    ("--progress/--no-progress", "progress", "Show progress bars and epoch lines."),
]


def _default(cls: type[RunConfig], name: str) -> str:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    value = fields[name].default
    if value is dataclasses.MISSING or value in ("", None):
        return ""
    return f" [default: {value:.6g}]" if isinstance(value, float) else f" [default: {value}]"


def run_options(cls: type[RunConfig]) -> Callable:
    """Add the options every training command shares (defaults shown from ``cls``)."""

    def decorate(command: Callable) -> Callable:
        for flag, name, text in reversed(_FLAGS):
            command = click.option(flag, name, default=None, help=text + _default(cls, name))(
                command
            )
        for flag, name, kind, text in reversed(_SHARED):
            multiple = name == "regularizers"
            if multiple:  # an ANN cannot take the terms that need a spiking network
                text = text.format(", ".join(list_regularizers(ann=cls.command == "train")))
            command = click.option(
                flag, name, type=kind, multiple=multiple, help=text + _default(cls, name)
            )(command)
        command = click.option(
            "--out", "-o", "json_out", type=click.Path(dir_okay=False),
            help="Also write a JSON summary (settings, best epoch, history).",
        )(command)  # fmt: skip
        return click.option(
            "--config", "recipe", type=click.Path(dir_okay=False),
            help="YAML recipe with settings (e.g. recipes/seed001_trades_rfgsm.yaml).",
        )(command)  # fmt: skip

    return decorate


def settings_from(recipe: str | None, options: dict) -> dict:
    """Recipe values overridden by the options given on the command line."""
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in options.items() if v is not None and v != ()})
    return values


def run_and_report(run: Callable[[], FitResult], what: str, json_out: str | None) -> None:
    """Run training; the main process prints a summary and writes ``--out``."""
    result = run()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    best = result.best_record
    click.echo(
        f"{what} -> {result.best} (best of {len(result.history)} epochs: epoch {result.best_epoch})"
    )
    if "val_robust_acc" in best:
        click.echo(
            f"held-out images: clean {100 * best['val_clean_acc']:.2f}%, "
            f"robust {100 * best['val_robust_acc']:.2f}%"
            + (
                f", quick suite {100 * best['val_quick_acc']:.2f}%"
                if "val_quick_acc" in best
                else ""
            )
        )
    click.echo(f"last epoch: {result.last}; checkpoint and logs in {result.out_dir}/")
    write_json_out(json_out, {
        "best": str(result.best), "last": str(result.last), "best_epoch": result.best_epoch,
        "out_dir": str(result.out_dir), "history": result.history,
    })  # fmt: skip


@click.command("finetune")
@click.argument("model", required=False)
@click.option("--timesteps", "-T", type=int, help="Simulation steps T (default: the model's).")
@click.option(
    "--teacher", help="SNN file whose source ANN --regularizer distill / layer-distill and "
    "--objective ard/rslad learn from (default: MODEL's own); e.g. the converted file, when MODEL "
    "was finetuned before.",
)  # fmt: skip
@click.option("--surrogate", help="Surrogate for BPTT, FAMILY[:G] (default: the model's).")
@click.option(
    "--encoder", help="Input coding to train with and save: direct, poisson or gaussian:SIGMA "
    "(noise training; default: the model's).",
)  # fmt: skip
@click.option(
    "--dither", type=float,
    help="Half-width a of every neuron's random initial membrane theta * U[v_init - a, v_init + "
    "a], drawn per input, to train with and save (0: off; default: the model's).",
)  # fmt: skip
@click.option(
    "--neuron", type=str,
    help=f"{' or '.join(NEURON_CHOICES)}: dlif turns every IF neuron into a DLIF neuron with "
    f"learnable per-step input gains, all 1 at first{_default(FinetuneConfig, 'neuron')}.",
)  # fmt: skip
@click.option(
    "--surrogate-scale", type=str,
    help="threshold: surrogate on (u - theta) / theta while training (stable BPTT); absolute: on "
    f"u - theta{_default(FinetuneConfig, 'surrogate_scale')}.",
)  # fmt: skip
@click.option(
    "--memory", type=str,
    help=f"{' or '.join(MEMORY_CHOICES)}: checkpoint keeps only the inputs of segments of "
    "about sqrt(N) spiking layers for BPTT and recomputes them in the backward pass (less "
    f"memory, about one more forward pass per step, same gradients)"
    f"{_default(FinetuneConfig, 'memory')}.",
)  # fmt: skip
@click.option(
    "--runtime", type=str,
    help=f"{' or '.join(RUNTIME_CHOICES)}: compiled runs each spiking layer's T steps as one "
    "torch.compile kernel per direction (same spikes, faster after seconds of compiling; "
    f"needs a C++ compiler on CPU){_default(FinetuneConfig, 'runtime')}.",
)  # fmt: skip
@click.option(
    "--layout", type=str,
    help=f"{' or '.join(LAYOUT_CHOICES)}: {LAYOUT_HELP}{_default(FinetuneConfig, 'layout')}.",
)  # fmt: skip
@click.option(
    "--train", "train", type=str,
    help=f"Parameters that learn: {', '.join(PARAMETER_SETS)}{_default(FinetuneConfig, 'train')}.",
)  # fmt: skip
@click.option(
    "--threshold-lr-scale", type=float,
    help="The thresholds learn at lr times this (their relative gradient is about 10x smaller "
    f"than the weights'){_default(FinetuneConfig, 'threshold_lr_scale')}.",
)  # fmt: skip
@click.option(
    "--temperature", type=str,
    help="Distillation temperature of --objective ard [default: 30].",
)  # fmt: skip
@click.option(
    "--attack-gradient", type=str,
    help="Gradient mode(s) of the inner attack, comma-separated specs as for evaluate's "
    "--gradient, e.g. bptt:sigmoid:20:detach,bptt:rect:0.25:detach,bptr (native: the "
    f"training surrogate){_default(FinetuneConfig, 'attack_gradient')}.",
)  # fmt: skip
@click.option(
    "--attack-gradient-pick", type=str,
    help=f"{' or '.join(PICKS)}: one of the --attack-gradient modes drawn per step, or the "
    "attack run in each and the per-sample worst kept (k times the attack's cost)"
    f"{_default(FinetuneConfig, 'attack_gradient_pick')}.",
)  # fmt: skip
@run_options(FinetuneConfig)
def command(model, recipe, json_out, **options) -> None:
    """Adversarially finetune the SNN file MODEL, or zoo:NAME (thresholds and weights, BPTT).

    Example: convertsnn finetune snn.safetensors --config recipes/seed001_trades_rfgsm.yaml
    --data cifar10 --out-dir runs/seed001. Multi-process: torchrun --nproc_per_node N -m
    convertsnn finetune ...
    """
    values = settings_from(recipe, {"model": model, **options})
    config = FinetuneConfig.from_dict(values, where=recipe or "the options")
    run_and_report(lambda: finetune(config), f"finetuned {config.model}", json_out)
