"""APGD: auto-PGD with a step-size schedule driven by the loss (Croce & Hein, ICML 2020).

The step size starts at ``2 * eps`` and is halved at checkpoints ``w_j`` (at 22 %, then at
intervals shrinking by 3 % of the budget down to 6 %) when, since the last checkpoint, (1) the
loss rose in fewer than ``rho`` of the steps, or (2) the step size was not halved at the last
checkpoint and the best loss did not improve; on halving, the iterate restarts from the best
point so far. Steps use momentum 0.75: ``x <- P(x + 0.75 (z - x) + 0.25 (x - x_prev))`` with
``z = P(x + eta * step(grad))``.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.attacks.restarts import RestartingAttack, WorstPoint


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based) at which APGD may halve its step size: after 22 % of the
    budget, then after intervals 3 % shorter each time, but at least 6 %."""
    interval = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks = [interval]
    while True:
        interval = max(interval - shrink, shortest)
        if marks[-1] + interval > steps:
            return marks
        marks.append(marks[-1] + interval)


class APGD(RestartingAttack):
    """APGD-CE / APGD-DLR, untargeted, L-inf or L2.

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        steps: iterations per restart (AutoAttack: 100).
        loss: ``"ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR).
        restarts: runs from new random starts, on the samples not broken yet.
        rho: fraction of loss increases below which the step size is halved (0.75).

    Returns, per sample, an adversarial point if one was found at any iteration (stochastic
    models: the first point where the fewest draws classified it correctly, see
    :class:`WorstPoint`), else the point with the highest loss. Example: ``APGD(snn, eps=8/255, loss="dlr")(x, y)``.
    """

    name = "apgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        gradient_mode: str | GradientMode | None = None,
    ) -> None:
        super().__init__(model, eps, norm, eot, gradient_mode, steps, loss, restarts)
        self.rho = float(rho)

    def run(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run from a random start on ``self.loss`` (targeted at ``target`` if given);
        returns (adversarial-or-best points, share of correct draws)."""
        loss = self.loss if target is None else "dlr-targeted"
        shape = (-1, *([1] * (x.dim() - 1)))
        eta = torch.full((x.shape[0],), 2 * self.eps, device=x.device)
        x_adv = self.random_start(x)
        grad, loss_now, _, correct = self.gradient(x_adv, y, loss, target)
        breaks = WorstPoint(x_adv, correct)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_now.clone()
        x_prev = x_adv.clone()
        marks = checkpoints(self.steps)
        last_mark, increases = 0, torch.zeros_like(loss_now)
        loss_best_at_mark = loss_best.clone()
        halved_at_mark = torch.zeros_like(loss_now, dtype=torch.bool)
        for k in range(1, self.steps + 1):
            z = self.project(x_adv + self.step(grad, 1.0) * eta.view(shape), x)
            momentum = 0.75 if k > 1 else 1.0
            x_new = self.project(
                x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev), x
            )
            x_prev, x_adv = x_adv, x_new
            loss_prev = loss_now
            grad, loss_now, _, correct = self.gradient(x_adv, y, loss, target)
            breaks.keep(x_adv, correct)
            increases += (loss_now > loss_prev).float()
            better = loss_now > loss_best
            x_best[better], grad_best[better] = x_adv[better], grad[better]
            loss_best = torch.where(better, loss_now, loss_best)
            if k in marks:
                stalled = increases < self.rho * (k - last_mark)
                no_gain = ~halved_at_mark & (loss_best <= loss_best_at_mark)
                halve = stalled | no_gain
                eta = torch.where(halve, eta / 2, eta)
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                x_prev[halve] = x_best[halve]
                halved_at_mark, loss_best_at_mark = halve, loss_best.clone()
                last_mark, increases = k, torch.zeros_like(increases)
        return breaks.result(x_best)
