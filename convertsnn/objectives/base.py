"""What every robust training objective shares: settings, the call signature and its output.

An objective is one small class: an *inner attack* that finds ``x_adv`` and a *loss* on the
model's outputs. All objectives are called the same way::

    out = objective(model, x, y)        # ObjectiveOutput
    out.loss.backward()

``model`` may be wrapped in DistributedDataParallel: the loss runs through the wrapper (so
gradients are synchronised), the inner attack through the plain module. The inner attack runs
the model in eval mode and uses whatever gradient mode the model is in (the training loop sets
BPTT with the chosen surrogate for SNNs), unless ``inner_gradient`` (an
:class:`~convertsnn.objectives.attack_gradient.InnerGradient`) names other modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from convertsnn.attacks.rfgsm import kl_divergence
from convertsnn.errors import ConvertSNNError

__all__ = ["Objective", "ObjectiveOutput", "eval_logits", "kl_divergence", "plain_module"]


@dataclass
class ObjectiveOutput:
    """One training step's loss and what the loop logs.

    ``loss`` is a scalar with gradients; ``clean_logits`` (eval mode) and ``adv_logits`` are
    detached ``[B, K]``; ``x_adv`` the detached adversarial batch; ``terms`` the loss parts.
    ``train_logits``: the training-mode logits of the clean batch with their gradients, where
    the loss computed them (a regulariser on them then needs no second forward pass).
    """

    loss: torch.Tensor
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor
    x_adv: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)
    train_logits: torch.Tensor | None = None


def plain_module(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` in eval mode, without gradients (training mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


class Objective:
    """Base class: validated inner-attack settings plus :meth:`__call__`.

    Args:
        eps: L-inf radius of the inner attack (e.g. 2/255), at least 0.
        steps: inner attack steps; default :attr:`default_steps`.
        alpha: inner step size; default ``2.5 * eps / steps`` (Madry et al. 2018; seed 001
            Stage A uses 10 steps of 0.5/255 at eps 2/255).
        beta: weight of the robust term; default :attr:`default_beta` (objectives without one
            reject it).
        random_start: start the inner attack from a random point near ``x``.
        temperature: distillation temperature; default :attr:`default_temperature` (objectives
            without one reject it).

    Subclasses set ``name``/``default_beta`` and write :meth:`attack` and :meth:`loss` (and
    :meth:`step_size` where the method fixes the step). Objectives that learn from the SNN's
    source ANN set ``needs_teacher`` and receive it in :meth:`setup`.
    """

    name: ClassVar[str] = ""
    default_beta: ClassVar[float | None] = None
    default_steps: ClassVar[int] = 10
    default_temperature: ClassVar[float | None] = None
    gradient_attack: ClassVar[bool] = True
    """False for objectives whose inner attack takes no gradient (no gradient mode applies)."""
    needs_teacher: ClassVar[bool] = False
    """True for objectives that distil the source ANN (set up by :meth:`setup`)."""

    def __init__(
        self,
        eps: float,
        steps: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        random_start: bool = True,
        temperature: float | None = None,
    ) -> None:
        if not eps >= 0:
            raise ConvertSNNError(f"eps must be at least 0, got {eps}")
        steps = self.default_steps if steps is None else steps
        if int(steps) != steps or steps < 1:
            raise ConvertSNNError(f"attack steps must be a positive integer, got {steps}")
        if alpha is not None and not alpha > 0:
            raise ConvertSNNError(f"the attack step size alpha must be positive, got {alpha}")
        if beta is not None and self.default_beta is None:
            raise ConvertSNNError(f"objective '{self.name}' has no beta; leave it out")
        if beta is not None and not beta >= 0:
            raise ConvertSNNError(f"beta must be at least 0, got {beta}")
        if temperature is not None and self.default_temperature is None:
            raise ConvertSNNError(f"objective '{self.name}' has no temperature; leave it out")
        if temperature is not None and not temperature > 0:
            raise ConvertSNNError(f"temperature must be positive, got {temperature}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.alpha = self.step_size(alpha)
        self.beta = self.default_beta if beta is None else float(beta)
        self.random_start = bool(random_start)
        self.temperature = self.default_temperature if temperature is None else float(temperature)
        self.inner_gradient = None  # an InnerGradient (attack_gradient.py); None: the model's own

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """Called once with the model as loaded, before training (as
        :meth:`Regularizer.setup <convertsnn.objectives.regularizers.Regularizer.setup>`);
        ``teacher`` is the SNN file whose source ANN teaches, when not the model's own.
        Nothing by default."""

    def step_size(self, alpha: float | None) -> float:
        """The inner step size: ``alpha``, or the method's default when None (here
        ``2.5 * eps / steps``). One-step methods override this to check ``alpha`` and ``steps``
        against what the method allows (``eps`` and ``steps`` are set when it is called)."""
        return 2.5 * self.eps / self.steps if alpha is None else float(alpha)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """Inner attack on the plain module, then the loss through ``model``."""
        plain = plain_module(model)
        clean_logits = eval_logits(plain, x)
        if self.inner_gradient is None:
            x_adv = self.attack(plain, x, y, clean_logits).detach()
        else:
            x_adv = self.inner_gradient.run(self.attack, plain, x, y, clean_logits)
        loss, adv_logits, terms = self.loss(model, x, x_adv, y)
        return ObjectiveOutput(loss, clean_logits, adv_logits.detach(), x_adv, terms)

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        """The inner maximisation: adversarial images for ``(x, y)``."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``(scalar loss, adversarial logits, loss parts)``; ``model`` is in training mode."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The resolved settings (for logs and model metadata)."""
        return {
            "objective": self.name,
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha,
            "beta": self.beta,
            "random_start": self.random_start,
            "temperature": self.temperature,
            "attack_gradient": str(self.inner_gradient or "native"),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"
