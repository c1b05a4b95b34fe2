"""APGD-T: APGD on the targeted DLR loss, one run per likely target class (Croce & Hein 2020)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

import torch
from torch import nn

from convertsnn.attacks.apgd import APGD
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError


class APGDT(APGD):
    """Targeted APGD-DLR against the ``targets`` classes ranked highest after the true one.

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        steps: iterations per target (AutoAttack: 100).
        targets: how many target classes to try (AutoAttack: 9); only samples not broken yet
            go on to the next target. Needs at least 4 classes.
        restarts, rho: see :class:`APGD` (restarts per target).

    Any misclassification counts as success. Example: ``APGDT(snn, eps=8/255, targets=9)(x, y)``.
    """

    name = "apgd-t"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        steps: int = 100,
        targets: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        gradient_mode: str | GradientMode | None = None,
    ) -> None:
        super().__init__(model, eps, norm, eot, steps, "dlr", restarts, rho, gradient_mode)
        if targets < 1:
            raise ConvertSNNError(f"targets must be >= 1, got {targets}")
        self.targets = int(targets)

    def run_targets(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
        """Per target rank (the ``rank``-th class after the true one in the clean logits; the
        top class may be y itself), ``restarts`` times: the batch's target classes."""
        logits = self.logits(x)
        classes = logits.shape[1]
        if classes < 4:
            raise ConvertSNNError(f"APGD-T needs at least 4 classes, the model has {classes}")
        ranked = logits.argsort(dim=1, descending=True)
        others = ranked[ranked != y[:, None]].view(len(x), classes - 1)
        for rank in range(1, min(self.targets, classes - 1) + 1):
            yield from repeat(others[:, rank - 1], self.restarts)
