"""PGD: projected gradient descent with random start and restarts (Madry et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.base import LOSSES, Attack
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError


class PGD(Attack):
    """Projected gradient ascent on CE or DLR (margin) loss.

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        steps: iterations per restart (default 20).
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        step: step size as a fraction of eps (e.g. 0.25 for eps/4); overrides ``alpha``.
        loss: ``"ce"`` or ``"dlr"``.
        restarts: independent runs; a sample counts as broken if any run breaks it.
        random_start: start from a random point in the ball.

    Returns, per sample, the first successful adversarial example found, else the last iterate
    of the last restart. Example: ``PGD(snn, eps=8/255, steps=20)(x, y)``.
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        steps: int = 20,
        alpha: float | None = None,
        loss: str = "ce",
        restarts: int = 1,
        random_start: bool = True,
        gradient_mode: str | GradientMode | None = None,
        step: float | None = None,
    ) -> None:
        super().__init__(model, eps, norm, eot, gradient_mode)
        if steps < 1 or restarts < 1:
            raise ConvertSNNError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        if loss not in LOSSES:
            raise ConvertSNNError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
        if step is not None and not step > 0:
            raise ConvertSNNError(f"PGD step must be a positive fraction of eps, got {step}")
        self.steps = int(steps)
        if step is not None:
            alpha = step * self.eps
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        self.loss = loss
        self.restarts = int(restarts)
        self.random_start_enabled = random_start

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def keep(candidate: torch.Tensor, fooled: torch.Tensor) -> None:
            newly = fooled & ~broken
            best[newly] = candidate[newly]
            broken.logical_or_(fooled)

        for _ in range(self.restarts):
            x_adv = self.random_start(x) if self.random_start_enabled else x.clone()
            for _ in range(self.steps):
                grad, _, logits = self.gradient(x_adv, y, self.loss)
                keep(x_adv, logits.argmax(dim=1) != y)
                x_adv = self.project(x_adv + self.step(grad, self.alpha), x)
            keep(x_adv, self.predict(x_adv) != y)
            best[~broken] = x_adv[~broken]
            if broken.all():
                break
        return best
