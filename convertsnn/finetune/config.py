"""Settings of a robust training run, from flags, a YAML recipe or Python, validated in one place.

:class:`FinetuneConfig` (``convertsnn finetune``: an SNN file) and :class:`TrainConfig`
(``convertsnn train``: a robust ANN from an architecture name) share :class:`RunConfig`.
A recipe file is a YAML mapping whose keys are the field names below (``eps: 2/255`` may be
written as a fraction); flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from convertsnn.errors import ConvertSNNError
from convertsnn.finetune.surrogate import SURROGATE_SCALES
from convertsnn.numbers import parse_number, parse_number_list
from convertsnn.objectives import get_objective, get_regularizer, objective_class
from convertsnn.objectives.attack_gradient import InnerGradient
from convertsnn.snn.compiled import RUNTIMES
from convertsnn.snn.encoding import parse_encoder
from convertsnn.snn.network import LAYOUTS, MEMORY_MODES
from convertsnn.snn.neurons import check_dither
from convertsnn.snn.surrogate import parse_surrogate

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "cosine-epoch", "constant")
AUGMENTATIONS = ("none", "crop-flip")
PARAMETER_SETS = ("all", "weights", "thresholds")
NEURON_CHOICES = ("keep", "dlif")
MEMORY_CHOICES = MEMORY_MODES
RUNTIME_CHOICES = RUNTIMES
LAYOUT_CHOICES = LAYOUTS
SELECTIONS = ("pgd", "quick")

# Fields that change how a run is carried out but not what it computes: a resumed run may
# change them (a run directory may also be moved).
RUNTIME_FIELDS = (
    "resume", "device", "progress", "tensorboard", "log_every", "checkpoint_every", "out_dir",
    "memory", "runtime", "layout",
)  # fmt: skip


@dataclass(kw_only=True)
class RunConfig:
    """Settings shared by finetuning and ANN training (see ``docs/finetuning.md``)."""

    data: str = ""
    data_dir: str | None = None
    train_images: int | None = None
    val_fraction: float = 0.1
    val_attack_steps: int = 10
    select_by: str = "pgd"
    select_images: int | None = None
    objective: str = "pgd-at"
    eps: float = 2 / 255
    alpha: float | None = None
    attack_steps: int | None = None
    beta: float | None = None
    temperature: float | None = None
    random_start: bool = True
    regularizers: list[str] = field(default_factory=list)
    weight_projection: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: str = "none"
    seed: int = 0
    out_dir: str = "runs/train"
    resume: bool = False
    checkpoint_every: int = 0
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    device: str = "auto"

    command: ClassVar[str] = "train"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line :class:`ConvertSNNError` for the first bad value."""
        if not self.data:
            raise ConvertSNNError("no training data: pass --data (dataset name or .npz file)")
        _at_least("train_images", self.train_images, 1, optional=True)
        if not 0 <= self.val_fraction < 1:
            raise ConvertSNNError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _at_least("val_attack_steps", self.val_attack_steps, 1)
        _choice("select_by", self.select_by, SELECTIONS)
        _at_least("select_images", self.select_images, 1, optional=True)
        if self.select_by == "quick" and self.val_fraction == 0:
            raise ConvertSNNError(
                "select_by quick ranks epochs on held-out images; val_fraction is 0 (none): "
                "set --val-fraction or use --select-by pgd"
            )
        if self.select_images is not None and self.select_by != "quick":
            raise ConvertSNNError(
                "select_images caps the quick suite's held-out images; add --select-by quick "
                "or drop --select-images"
            )
        self.build_objective()
        for spec in self.regularizers:
            if get_regularizer(spec).name == "mppd" and self.objective == "natural":
                raise ConvertSNNError(
                    "the mppd regularizer measures how far the objective's adversarial images "
                    "move the membrane potentials; natural training has none (it would be 0): "
                    "use an adversarial objective"
                )
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.lr > 0:
            raise ConvertSNNError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConvertSNNError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ConvertSNNError(f"weight_decay must be at least 0, got {self.weight_decay}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTATIONS)
        if not 0 <= self.weight_projection < 1:
            raise ConvertSNNError(
                f"weight_projection must be in [0, 1) (seed 003 uses 5e-4), got "
                f"{self.weight_projection}"
            )
        _at_least("checkpoint_every", self.checkpoint_every, 0)
        _at_least("log_every", self.log_every, 0)
        if not self.out_dir:
            raise ConvertSNNError("out_dir is empty; pass --out-dir RUN_DIR")

    def build_objective(self):
        """The :class:`~convertsnn.objectives.Objective` these settings describe."""
        return get_objective(
            self.objective,
            eps=self.eps,
            steps=self.attack_steps,
            alpha=self.alpha,
            beta=self.beta,
            random_start=self.random_start,
            temperature=self.temperature,
        )

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def differences(self, other: dict) -> list[str]:
        """Settings (other than :data:`RUNTIME_FIELDS`) that differ from ``other``; a setting
        that ``other`` lacks (added to convertsnn later) counts only if it is not at its default."""
        mine = self.to_dict()
        defaults = type(self)._defaults()
        keys = sorted(set(mine) | set(other))
        return [
            f"{k}: {other.get(k)!r} -> {mine.get(k)!r}"
            for k in keys
            if k not in RUNTIME_FIELDS and mine.get(k) != other.get(k, defaults.get(k))
        ]

    @classmethod
    def _defaults(cls) -> dict:
        values = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
        return json.loads(json.dumps(values))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings"):
        """Build from a mapping (recipe or flags); strings such as ``"2/255"`` become numbers."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConvertSNNError(
                f"unknown setting {unknown[0]!r} in {where}; known: {', '.join(sorted(names))}"
            )
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """Robust finetuning of a converted SNN file (seed 001 stage C by default).

    ``timesteps``/``surrogate`` override the model's own; ``surrogate_scale`` ``threshold``
    applies the surrogate to the threshold-normalised membrane during training (see
    :mod:`convertsnn.finetune.surrogate`), ``absolute`` to ``u - theta`` as it is; ``train``
    picks the parameters that learn: ``all`` (weights, biases and thresholds, as seed 001),
    ``weights`` or ``thresholds``. ``memory`` ``checkpoint`` recomputes each spiking layer in
    the backward pass instead of keeping its activations (see
    :mod:`convertsnn.snn.checkpointing`); ``runtime`` ``compiled`` runs the neurons as compiled
    kernels (:mod:`convertsnn.snn.compiled`, same spikes); ``layout`` ``channels_last`` stores
    the convolutions' weights and feature maps channels-last (faster on CPU with the compiled
    runtime, see ``SpikingNetwork.layout``). ``teacher``: an SNN file whose
    source ANN the ``distill`` and ``layer-distill`` regularizers and the ``ard``/``rslad``
    objectives learn from (default: the model's own, as loaded). ``attack_gradient``: the
    inner attack's gradient mode(s), comma-separated specs of
    :mod:`convertsnn.attacks.gradient_modes` (default ``native``: the training surrogate), one
    drawn per step (``attack_gradient_pick`` ``draw``) or the per-sample worst (``worst``); see
    :mod:`convertsnn.objectives.attack_gradient`. ``threshold_lr_scale``: the thresholds learn at
    ``lr * threshold_lr_scale`` (their relative gradient is about 10x smaller than the weights',
    ``benchmarks/results/gradient_health.md``; 1 keeps one learning rate). ``dither``: the
    half-width of every neuron's random initial membrane to train with and save (see
    :class:`~convertsnn.snn.neurons.IFNeuron`; 0 turns it off; default: the model's).
    """

    model: str = ""
    teacher: str | None = None
    timesteps: int | None = None
    encoder: str | None = None
    dither: float | None = None
    neuron: str = "keep"
    surrogate: str | None = None
    surrogate_scale: str = "threshold"
    memory: str = "full"
    runtime: str = "eager"
    layout: str = "nchw"
    train: str = "all"
    threshold_lr_scale: float = 1.0
    attack_gradient: str = "native"
    attack_gradient_pick: str = "draw"
    objective: str = "trades-rfgsm"
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-3
    out_dir: str = "runs/finetune"

    command: ClassVar[str] = "finetune"

    def validate(self) -> None:
        if not self.model:
            raise ConvertSNNError("no model: pass the SNN file written by `convertsnn convert`")
        _at_least("timesteps", self.timesteps, 1, optional=True)
        if self.surrogate is not None:
            parse_surrogate(self.surrogate)
        _choice("surrogate_scale", self.surrogate_scale, SURROGATE_SCALES)
        _choice("train", self.train, PARAMETER_SETS)
        if self.encoder is not None:
            parse_encoder(self.encoder)
        if self.dither is not None:
            check_dither(self.dither)
        _choice("neuron", self.neuron, NEURON_CHOICES)
        _choice("memory", self.memory, MEMORY_CHOICES)
        _choice("runtime", self.runtime, RUNTIME_CHOICES)
        _choice("layout", self.layout, LAYOUT_CHOICES)
        inner = InnerGradient(self.attack_gradient, self.attack_gradient_pick)
        if not inner.native and not objective_class(self.objective).gradient_attack:
            raise ConvertSNNError(
                f"objective '{self.objective}' has no gradient attack, so attack_gradient "
                f"'{self.attack_gradient}' cannot apply; use a gradient objective (pgd-at, "
                "trades, ...) or leave attack_gradient native"
            )
        if not self.threshold_lr_scale > 0:
            raise ConvertSNNError(
                f"threshold_lr_scale must be positive, got {self.threshold_lr_scale}"
            )
        if self.threshold_lr_scale != 1 and self.train == "weights":
            raise ConvertSNNError(
                "threshold_lr_scale scales the thresholds' learning rate, but --train weights "
                "freezes them; drop --threshold-lr-scale or train the thresholds"
            )
        distills = any(get_regularizer(s).needs_teacher for s in self.regularizers)
        if self.teacher and not distills and not objective_class(self.objective).needs_teacher:
            raise ConvertSNNError(
                "a teacher is only used by the distill and layer-distill regularizers and the "
                "ard/rslad objectives; add --regularizer distill, use one of them, or drop "
                "--teacher"
            )
        super().validate()

    def build_objective(self):
        objective = super().build_objective()
        inner = InnerGradient(self.attack_gradient, self.attack_gradient_pick)
        objective.inner_gradient = None if inner.native else inner
        return objective


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Robust training of an ANN built by ``create_model(arch, **arch_kwargs)``.

    ``mean``/``std`` become a normalisation layer inside the model (inputs stay in [0, 1]).
    """

    arch: str = ""
    arch_kwargs: dict = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None

    def validate(self) -> None:
        if not self.arch:
            raise ConvertSNNError("no architecture: pass --arch NAME (see `convertsnn models`)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and not value:
                raise ConvertSNNError(f"{name} is empty; give one value per input channel")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConvertSNNError(f"std values must be positive, got {self.std}")
        if objective_class(self.objective).needs_teacher:
            raise ConvertSNNError(
                f"objective '{self.objective}' distils an SNN's source ANN into the SNN; use it "
                "with `convertsnn finetune` (an ANN has no teacher here)"
            )
        super().validate()


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The settings mapping of a YAML recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConvertSNNError(f"recipe file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ConvertSNNError(f"{path} is not valid YAML ({first})") from None
    if not isinstance(values, dict):
        raise ConvertSNNError(f"{path} must hold a mapping of settings (key: value lines)")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _at_least(name: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or int(value) != value or value < low:
        raise ConvertSNNError(f"{name} must be an integer >= {low}, got {value}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConvertSNNError(f"unknown {name} '{value}'; choose one of {', '.join(choices)}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a recipe/flag value into the field's type, with one-line errors."""
    args = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None:
        if type(None) in args:
            return None
        raise ConvertSNNError(f"setting '{name}' cannot be empty")
    base = next(iter(args - {type(None)}))
    origin = typing.get_origin(base)
    if base is bool:
        if not isinstance(value, bool):
            raise ConvertSNNError(f"setting '{name}' must be true or false, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):
            return parse_number(value, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        item = typing.get_args(base)[0]
        if isinstance(value, str):
            return parse_number_list(value, name) if item is float else [value]
        if isinstance(value, (list, tuple)):
            return [_coerce(name, v, item) for v in value]
    elif base is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConvertSNNError(
                    f"setting '{name}' must be a JSON object, e.g. '{{\"num_classes\": 10}}'"
                ) from None
        if isinstance(value, dict):
            return value
    raise ConvertSNNError(f"setting '{name}' has the wrong type: {value!r}")
