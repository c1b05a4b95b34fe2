"""The inner attack's gradient mode(s) when adversarially training an SNN (issue 15).

By default an objective's inner attack takes the gradient the model is set to: the training
surrogate. The suites (``docs/evaluation.md``) break converted SNNs far more often in other
modes: sharp threshold-relative surrogates with the reset detached, BPTR, the ANN proxy, the
adaptive surrogate. Training against only the training surrogate's attack can then reward
gradient masking. :class:`InnerGradient` runs the inner attack in modes of
:mod:`convertsnn.attacks.gradient_modes` instead: ``draw`` picks one mode per step at random
(one attack's cost), ``worst`` runs it in every mode and keeps, per sample, the adversarial
image with the highest cross-entropy on the SNN's own forward pass (k attacks' cost).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.attacks.gradient_modes import GradientMode, parse_gradient_mode
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import eval_logits

PICKS = ("draw", "worst")

InnerAttack = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""An objective's :meth:`~convertsnn.objectives.Objective.attack`."""


def parse_attack_gradient(spec: str) -> tuple[GradientMode, ...]:
    """Comma-separated gradient modes, e.g. ``"bptt:sigmoid:20:detach,bptr"``."""
    parts = [part.strip() for part in str(spec).split(",")]
    if not all(parts):
        raise ConvertSNNError(
            f"attack_gradient '{spec}' has an empty mode; separate modes by commas, e.g. "
            "bptt:sigmoid:20:detach,bptt:rect:0.25:detach"
        )
    modes = tuple(parse_gradient_mode(part) for part in parts)
    if len(set(modes)) < len(modes):
        raise ConvertSNNError(f"attack_gradient '{spec}' names a mode twice")
    return modes


class InnerGradient:
    """Runs an inner attack in ``modes`` (a spec for :func:`parse_attack_gradient`), one drawn
    per call (``pick="draw"``) or the per-sample worst of all (``pick="worst"``)."""

    def __init__(self, modes: str = "native", pick: str = "draw") -> None:
        if pick not in PICKS:
            raise ConvertSNNError(
                f"unknown attack_gradient_pick '{pick}'; choose one of {', '.join(PICKS)}"
            )
        self.modes = parse_attack_gradient(modes)
        self.pick = pick

    @property
    def native(self) -> bool:
        """True when the attack runs in the model's own gradient mode only (the default)."""
        return self.modes == (GradientMode(),)

    def __str__(self) -> str:
        modes = ",".join(str(m) for m in self.modes)
        return modes if len(self.modes) == 1 else f"{self.pick} of {modes}"

    def run(
        self,
        attack: InnerAttack,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        clean_logits: torch.Tensor,
    ) -> torch.Tensor:
        """``attack(model, x, y, clean_logits)`` in the chosen mode(s); detached images."""
        if self.pick == "draw" or len(self.modes) == 1:
            mode = self.modes[int(torch.randint(len(self.modes), ()))]
            return self._in_mode(mode, attack, model, x, y, clean_logits)
        worst, worst_loss = None, None
        for mode in self.modes:
            x_adv = self._in_mode(mode, attack, model, x, y, clean_logits)
            loss = F.cross_entropy(eval_logits(model, x_adv), y, reduction="none")
            if worst is None:
                worst, worst_loss = x_adv, loss
                continue
            wins = loss > worst_loss
            worst = torch.where(wins.view(-1, *[1] * (x.dim() - 1)), x_adv, worst)
            worst_loss = torch.maximum(loss, worst_loss)
        return worst

    @staticmethod
    def _in_mode(mode: GradientMode, attack: InnerAttack, model, x, y, clean_logits):
        with mode.bind(model)():
            return attack(model, x, y, clean_logits).detach()
