"""The loop bookkeeping shared by iterative attacks (PGD, APGD, APGD-T).

An iterative attack is a series of runs (random restarts, target classes), each on the samples
that no earlier run broke (AutoAttack's restarts, Croce & Hein 2020) or on the whole batch (PGD's
restarts, Madry et al. 2018). Inside a run, each sample keeps the first point that fooled the
model (:class:`FirstBreak`); across runs, a sample keeps the point of the first run that broke
it, else the point of the last run that saw it.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

import torch
from torch import nn

from convertsnn.attacks.base import LOSSES, Attack
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError


class FirstBreak:
    """Per sample, the first point of a run that fooled the model.

    ``FirstBreak(start)`` starts with no sample fooled; :meth:`keep` records candidates,
    :meth:`result` fills the samples never fooled from a fallback point.
    """

    def __init__(self, start: torch.Tensor, fooled: torch.Tensor | None = None) -> None:
        self.points = start.clone()
        self.fooled = (
            torch.zeros(len(start), dtype=torch.bool, device=start.device)
            if fooled is None
            else fooled
        )

    def keep(self, candidate: torch.Tensor, fooled: torch.Tensor) -> None:
        """Record ``candidate`` for the samples it fools for the first time."""
        newly = fooled & ~self.fooled
        self.points[newly] = candidate[newly]
        self.fooled |= newly

    def result(self, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points, fooled)``: the first break per sample, else ``fallback``'s point."""
        self.points[~self.fooled] = fallback[~self.fooled]
        return self.points, self.fooled


class RestartingAttack(Attack):
    """An attack made of runs; subclasses write :meth:`run` (and :meth:`run_targets` for
    targeted runs).

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        steps: iterations per run.
        loss: ``"ce"`` or ``"dlr"``.
        restarts: runs (per target class, for targeted attacks).

    ``on_survivors``: each run attacks only the samples no earlier run broke (else the whole
    batch, which keeps the random draws of every run independent of earlier runs' success).
    """

    on_survivors = True

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        gradient_mode: str | GradientMode | None = None,
        steps: int = 20,
        loss: str = "ce",
        restarts: int = 1,
    ) -> None:
        super().__init__(model, eps, norm, eot, gradient_mode)
        if steps < 1 or restarts < 1:
            raise ConvertSNNError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        if loss not in LOSSES:
            raise ConvertSNNError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
        self.steps = int(steps)
        self.loss = loss
        self.restarts = int(restarts)

    def run_targets(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor | None]:
        """One item per run: the target class of every sample of the batch, or None
        (untargeted; the default: ``restarts`` untargeted runs)."""
        return repeat(None, self.restarts)

    def run(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run on ``(x, y)``: ``(points, fooled)`` per sample (see :class:`FirstBreak`)."""
        raise NotImplementedError

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        everyone = torch.arange(x.shape[0], device=x.device)
        for target in self.run_targets(x, y):
            if broken.all():
                break
            idx = (~broken).nonzero().squeeze(1) if self.on_survivors else everyone
            points, fooled = self.run(x[idx], y[idx], None if target is None else target[idx])
            fresh = ~broken[idx]  # samples an earlier run broke keep that run's point
            best[idx[fresh]] = points[fresh]
            broken[idx[fresh]] = fooled[fresh]
        return best
