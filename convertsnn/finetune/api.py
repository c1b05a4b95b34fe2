"""Python entry points: ``finetune`` (an SNN file) and ``train`` (a robust ANN).

Example::

    from convertsnn.finetune import finetune
    result = finetune(model="snn.safetensors", data="cifar10", objective="trades-rfgsm",
                      eps=2 / 255, epochs=3, out_dir="runs/r2b")
    print(result.best, result.best_record)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from convertsnn.data import check_dataset_fits
from convertsnn.errors import ConvertSNNError
from convertsnn.finetune.checkpoint import seed_everything
from convertsnn.finetune.config import FinetuneConfig, RunConfig, TrainConfig
from convertsnn.finetune.data import load_training_data
from convertsnn.finetune.distributed import distributed_context
from convertsnn.finetune.loop import FitResult, TrainingTask, fit
from convertsnn.finetune.surrogate import surrogate_scale
from convertsnn.importers import Preprocessing, save_ann
from convertsnn.importers.base import with_normalization
from convertsnn.models import create_model
from convertsnn.snn.dlif import to_dlif
from convertsnn.snn.encoding import parse_encoder
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn, save_snn
from convertsnn.zoo import resolve_model_file


def finetune(config: FinetuneConfig | dict | None = None, **settings) -> FitResult:
    """Robustly finetune the SNN file ``config.model`` (see :class:`FinetuneConfig`).

    Writes ``best.safetensors`` / ``last.safetensors`` (the SNN file format, with the training
    settings and history under ``metadata["finetune"]``), a checkpoint and logs to ``out_dir``.
    """
    config = _as_config(FinetuneConfig, config, settings)
    with distributed_context(config.device) as ctx:
        seed_everything(config.seed + ctx.rank)
        snn = load_snn(resolve_model_file(config.model), ctx.device)
        if config.timesteps is not None:
            snn.timesteps = config.timesteps
        if config.encoder is not None:
            snn.encoder = parse_encoder(config.encoder)
        if config.dither is not None:
            snn.set_dither(config.dither)
        if config.neuron == "dlif":
            to_dlif(snn)
        snn.memory = config.memory
        snn.runtime = config.runtime
        snn.layout = config.layout
        snn.set_gradient("bptt", config.surrogate)
        train_set, val_set = load_training_data(
            config.data, config.val_fraction, config.seed, config.data_dir,
            config.train_images, snn.input_size,
        )  # fmt: skip
        check_dataset_fits(train_set, config.data, num_classes=snn.metadata.get("num_classes"))
        previous = snn.metadata.get("finetune")

        def save(path: Path, info: dict) -> None:
            info = {**info, "model": Path(config.model).name}
            snn.metadata["finetune"] = {**info, "previous": previous} if previous else info
            # the biases now hold more than bias calibration's shifts: the record no longer
            # leads back to an ANN (the next run's teacher is this model's ANN view)
            snn.metadata.pop("bias_corrections", None)
            save_snn(snn, path)

        teacher = source_of(config.teacher, snn, ctx.device) if config.teacher else None
        parameters = select_parameters(snn, config.train)
        if config.threshold_lr_scale != 1:
            parameters = parameter_groups(snn, parameters, config.threshold_lr_scale)
        task = TrainingTask(snn, parameters, save, teacher)
        with surrogate_scale(snn, config.surrogate_scale):
            return fit(config, task, train_set, val_set, ctx)


def train(config: TrainConfig | dict | None = None, **settings) -> FitResult:
    """Robustly train the ANN ``create_model(config.arch, **config.arch_kwargs)`` from scratch
    (``num_classes`` defaults to the number of classes in the data).

    Writes ``best.safetensors`` / ``last.safetensors`` in the self-describing ANN format of
    :func:`convertsnn.importers.save_ann` (loadable by ``convertsnn convert``), with the training
    settings and history under ``training``.
    """
    config = _as_config(TrainConfig, config, settings)
    with distributed_context(config.device) as ctx:
        seed_everything(config.seed + ctx.rank)
        train_set, val_set = load_training_data(
            config.data, config.val_fraction, config.seed, config.data_dir, config.train_images
        )
        preprocessing = Preprocessing(
            tuple(config.mean) if config.mean else None,
            tuple(config.std) if config.std else None,
            train_set.image_size,
            train_set.num_classes,
        )
        arch_kwargs = {"num_classes": train_set.num_classes, **config.arch_kwargs}
        net = create_model(config.arch, **arch_kwargs)
        model = with_normalization(net, preprocessing).to(ctx.device)

        def save(path: Path, info: dict) -> None:
            save_ann(net, path, config.arch, arch_kwargs, preprocessing, {"training": info})

        task = TrainingTask(model, [p for p in model.parameters() if p.requires_grad], save)
        return fit(config, task, train_set, val_set, ctx)


def source_of(path: str, snn: SpikingNetwork, device) -> SpikingNetwork:
    """The SNN file (or ``zoo:NAME``) ``path`` as a distillation teacher for ``snn`` (same input and classes)."""
    teacher = load_snn(resolve_model_file(path), device)
    theirs = (teacher.input_size, teacher.metadata.get("num_classes"))
    ours = (snn.input_size, snn.metadata.get("num_classes"))
    if theirs != ours:
        raise ConvertSNNError(
            f"teacher {path} takes inputs {theirs[0]} with {theirs[1]} classes but the model "
            f"takes {ours[0]} with {ours[1]}; pass the file the model was converted as"
        )
    return teacher


def select_parameters(snn: SpikingNetwork, which: str) -> list[nn.Parameter]:
    """Mark the parameters that learn and return them: ``all``, ``weights`` (everything but
    the neurons' thresholds: weights, biases, kept BatchNorm) or ``thresholds``."""
    thresholds = {id(neuron.threshold) for neuron in snn.neurons()}
    chosen = []
    for parameter in snn.parameters():
        learns = which == "all" or (id(parameter) in thresholds) == (which == "thresholds")
        parameter.requires_grad_(learns)
        if learns:
            chosen.append(parameter)
    return chosen


def parameter_groups(
    snn: SpikingNetwork, parameters: list[nn.Parameter], threshold_lr_scale: float
) -> list[dict]:
    """``parameters`` as two optimiser groups: the thresholds at ``threshold_lr_scale`` times the
    learning rate, everything else at the learning rate (empty groups are left out)."""
    thresholds = {id(neuron.threshold) for neuron in snn.neurons()}
    groups = [
        {"params": [p for p in parameters if id(p) not in thresholds], "lr_scale": 1.0},
        {"params": [p for p in parameters if id(p) in thresholds], "lr_scale": threshold_lr_scale},
    ]
    return [group for group in groups if group["params"]]


def _as_config(cls: type[RunConfig], config, settings: dict) -> RunConfig:
    if isinstance(config, cls) and not settings:
        return config
    values = config.to_dict() if isinstance(config, cls) else dict(config or {})
    return cls.from_dict({**values, **settings}, where=f"{cls.command} settings")
