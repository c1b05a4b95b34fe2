"""PGD: projected gradient descent with random start and restarts (Madry et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.attacks.restarts import RestartingAttack, WorstPoint
from convertsnn.errors import ConvertSNNError


class PGD(RestartingAttack):
    """Projected gradient ascent on CE or DLR (margin) loss.

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        steps: iterations per restart (default 20).
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.).
        step: step size as a fraction of eps (e.g. 0.25 for eps/4); overrides ``alpha``.
        loss: ``"ce"`` or ``"dlr"``.
        restarts: independent runs on the whole batch; a sample counts as broken if any run
            breaks it.
        random_start: start from a random point in the ball.

    Returns, per sample, the first successful adversarial example found (stochastic models: the
    first point where the fewest draws classified it correctly, see :class:`WorstPoint`), else
    the last iterate of the last restart. Example: ``PGD(snn, eps=8/255, steps=20)(x, y)``.
    """

    name = "pgd"
    on_survivors = False

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
        super().__init__(model, eps, norm, eot, gradient_mode, steps, loss, restarts)
        if step is not None and not step > 0:
            raise ConvertSNNError(f"PGD step must be a positive fraction of eps, got {step}")
        if step is not None:
            alpha = step * self.eps
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        self.random_start_enabled = random_start

    def run(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart: ``steps`` steps from a (random) start; the worst point per sample (see
        :class:`WorstPoint`), else the last iterate."""
        x_adv = self.random_start(x) if self.random_start_enabled else x.clone()
        breaks = WorstPoint(x_adv)
        for _ in range(self.steps):
            grad, _, _, correct = self.gradient(x_adv, y, self.loss)
            breaks.keep(x_adv, correct)
            x_adv = self.project(x_adv + self.step(grad, self.alpha), x)
        breaks.keep(x_adv, self.judge(x_adv, y)[1])
        return breaks.result(x_adv)
