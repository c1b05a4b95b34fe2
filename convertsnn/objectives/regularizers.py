"""Regularisers: extra loss terms that compose with any objective.

The training loss is ``objective loss + sum_i weight_i * regulariser_i``. A regulariser is a
small class registered with :func:`register_regularizer` and addressed by a spec string
``NAME[:WEIGHT]`` (``--regularizer NAME:WEIGHT`` on the command line, ``regularizers:`` in a
recipe). It sees the model, the batch and the objective's output (including ``x_adv``), so
terms on clean or adversarial inputs, on input gradients (gradient sparsity, seed 000) or on
hooked membrane currents (MS-MPPD, seed 003) all fit this signature::

    @register_regularizer
    class MyTerm(Regularizer):
        name = "my-term"
        def __call__(self, model, x, y, out):
            return model(out.x_adv).pow(2).mean()
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import ObjectiveOutput

_REGULARIZERS: dict[str, type[Regularizer]] = {}


class Regularizer:
    """Base class: ``regularizer(model, x, y, out) -> scalar`` (unweighted), plus ``weight``."""

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    needs_spiking_network: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False  # learns from a source ANN (``setup``'s ``teacher``)

    def __init__(self, weight: float | None = None) -> None:
        weight = self.default_weight if weight is None else float(weight)
        if not weight >= 0:
            raise ConvertSNNError(f"regularizer '{self.name}' needs a weight >= 0, got {weight}")
        self.weight = weight

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """Called once with the model as loaded, before training (and before a checkpoint is
        restored); e.g. to keep a frozen copy of it. ``teacher`` is the network a distillation
        term learns from when it is not the model itself. Nothing by default."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.name}:{self.weight:g}"


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Register a :class:`Regularizer` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _REGULARIZERS[cls.name] = cls
    return cls


def list_regularizers(ann: bool = False) -> list[str]:
    """Names of the registered regularizers, sorted (``ann``: only those an ANN can train with)."""
    return sorted(n for n, c in _REGULARIZERS.items() if not (ann and c.needs_spiking_network))


def get_regularizer(spec: str) -> Regularizer:
    """``"NAME"`` or ``"NAME:WEIGHT"`` to a regularizer."""
    name, _, weight = str(spec).strip().partition(":")
    if name not in _REGULARIZERS:
        known = ", ".join(list_regularizers()) or "none are installed"
        raise ConvertSNNError(f"unknown regularizer '{name}' ({known})")
    try:
        return _REGULARIZERS[name](float(weight) if weight else None)
    except ValueError:
        raise ConvertSNNError(
            f"regularizer weight in '{spec}' is not a number; write e.g. {name}:0.01"
        ) from None


def regularized_loss(
    regularizers: list[Regularizer],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out: ObjectiveOutput,
) -> torch.Tensor:
    """``out.loss + sum weight * term``; each term is also recorded in ``out.terms``."""
    loss = out.loss
    for regularizer in regularizers:
        term = regularizer(model, x, y, out)
        out.terms[regularizer.name] = term.item()
        loss = loss + regularizer.weight * term
    return loss
