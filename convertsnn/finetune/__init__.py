"""Robust training: finetune converted SNNs and train robust source ANNs (resumable, DDP).

``finetune(...)`` / ``train(...)`` take a config (or keyword settings) and return a
:class:`FitResult`; the CLI commands ``convertsnn finetune`` / ``convertsnn train`` wrap them.
"""

from convertsnn.finetune.api import finetune, select_parameters, train
from convertsnn.finetune.config import FinetuneConfig, RunConfig, TrainConfig, load_recipe
from convertsnn.finetune.loop import FitResult, TrainingTask, fit

__all__ = [
    "FinetuneConfig",
    "FitResult",
    "RunConfig",
    "TrainConfig",
    "TrainingTask",
    "finetune",
    "fit",
    "load_recipe",
    "select_parameters",
    "train",
]
