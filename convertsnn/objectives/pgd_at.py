"""PGD adversarial training (Madry et al., ICLR 2018): cross-entropy on PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.objectives.base import Objective
from convertsnn.objectives.inner import InnerPGD
from convertsnn.objectives.registry import register_objective


@register_objective
class PGDAT(Objective):
    """``CE(f(x_adv), y)`` with ``x_adv`` = PGD on the CE loss from a uniform random start.

    Example: ``PGDAT(eps=2/255)(model, x, y).loss.backward()``.
    """

    name = "pgd-at"

    def attack(self, model, x, y, clean_logits):
        start = "uniform" if self.random_start else "none"
        return InnerPGD(model, self.eps, self.steps, self.alpha, "ce", start)(x, y)

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        adv_logits = model(x_adv)
        loss = F.cross_entropy(adv_logits, y)
        return loss, adv_logits, {"ce_adv": loss.item()}
