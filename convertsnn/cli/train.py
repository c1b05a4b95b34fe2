"""``convertsnn train``: robust training of a source ANN (same objectives as finetune)."""

from __future__ import annotations

import click

from convertsnn.cli.finetune import run_and_report, run_options, settings_from
from convertsnn.finetune import TrainConfig, train


@click.command("train")
@click.option("--arch", help="Architecture name (see `convertsnn models`).")
@click.option("--arch-kwargs", help="Architecture arguments as JSON, e.g. '{\"width\": 16}'.")
@click.option("--mean", help="Per-channel input mean, e.g. 0.4914,0.4822,0.4465.")
@click.option("--std", help="Per-channel input std.")
@run_options(TrainConfig)
def command(recipe, json_out, **options) -> None:
    """Adversarially train an ANN from scratch; writes a file `convertsnn convert` reads.

    Example: convertsnn train --arch resnet20 --mean 0.4914,0.4822,0.4465 --std
    0.2471,0.2435,0.2616 --data cifar10 --objective trades --eps 2/255 --out-dir runs/ann
    """
    config = TrainConfig.from_dict(settings_from(recipe, options), where=recipe or "the options")
    run_and_report(lambda: train(config), f"trained {config.arch}", json_out)
