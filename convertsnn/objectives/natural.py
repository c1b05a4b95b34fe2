"""Natural training: cross-entropy on the clean images, no adversary.

With a stochastic input encoder (``--encoder gaussian:SIGMA`` or ``poisson``) every forward pass
draws new noise, so this is noise training: Gaussian data augmentation of the base classifier
as in randomised smoothing (Cohen et al., ICML 2019) and randomised smoothing coding (seed 002:
Wu et al., ACM MM 2024), optionally with ``--regularizer distill:WEIGHT``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.objectives.base import Objective, ObjectiveOutput
from convertsnn.objectives.registry import register_objective


@register_objective
class Natural(Objective):
    """``CE(f(x), y)``; ``x_adv`` is ``x`` itself (eps and the attack settings are unused)."""

    name = "natural"
    gradient_attack = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        loss, logits, terms = self.loss(model, x, x, y)
        detached = logits.detach()
        return ObjectiveOutput(loss, detached, detached, x, terms, train_logits=logits)

    def attack(self, model, x, y, clean_logits):
        return x

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, logits, {"ce_clean": loss.item()}
