"""The loop bookkeeping shared by iterative attacks (PGD, APGD, APGD-T).

An iterative attack is a series of runs (random restarts, target classes), each on the samples
that no earlier run broke (AutoAttack's restarts, Croce & Hein 2020) or on the whole batch (PGD's
restarts, Madry et al. 2018). Inside a run, each sample keeps the first point where the fewest
draws classified it correctly (:class:`WorstPoint`; for a deterministic model the first break);
across runs, a sample keeps the point of the run that lowered its share of correct draws most
(the earliest on ties), else the point of the last run that saw it. A sample counts as broken
when every draw misclassifies it.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

import torch
from torch import nn

from convertsnn.attacks.base import LOSSES, Attack
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError


class WorstPoint:
    """Per sample, the first point of a run where the fewest draws classified it correctly.

    ``WorstPoint(start, correct)`` starts from ``start`` with its share of correct draws
    (default: all correct); :meth:`keep` records candidates that lower it, :meth:`result` fills
    the samples never lowered from a fallback point. A deterministic model's share is 0 or 1, so
    this is the first point that fooled it.
    """

    def __init__(self, start: torch.Tensor, correct: torch.Tensor | None = None) -> None:
        self.points = start.clone()
        self.correct = torch.ones(len(start), device=start.device) if correct is None \
            else correct.clone()  # fmt: skip
        self.lowered = self.correct < 1

    def keep(self, candidate: torch.Tensor, correct: torch.Tensor) -> None:
        """Record ``candidate`` for the samples where it lowers the share of correct draws."""
        lower = correct < self.correct
        self.points[lower] = candidate[lower]
        self.correct = torch.where(lower, correct, self.correct)
        self.lowered |= lower

    def result(self, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points, correct)``: the worst point per sample, else ``fallback``'s point."""
        self.points[~self.lowered] = fallback[~self.lowered]
        return self.points, self.correct


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
        """One run on ``(x, y)``: ``(points, correct)`` per sample (see :class:`WorstPoint`)."""
        raise NotImplementedError

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        correct = torch.ones(x.shape[0], device=x.device)  # lowest share of correct draws so far
        everyone = torch.arange(x.shape[0], device=x.device)
        for target in self.run_targets(x, y):
            if (correct == 0).all():
                break
            idx = (correct > 0).nonzero().squeeze(1) if self.on_survivors else everyone
            points, run_correct = self.run(x[idx], y[idx], None if target is None else target[idx])
            # a broken sample keeps its run's point; the others take a lower share, or the
            # latest point while nothing lowered theirs
            take = (correct[idx] > 0) & ((run_correct < correct[idx]) | (correct[idx] == 1))
            best[idx[take]] = points[take]
            correct[idx[take]] = torch.minimum(run_correct[take], correct[idx[take]])
        return best
