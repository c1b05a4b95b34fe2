"""TRADES (Zhang et al., ICML 2019): clean cross-entropy plus beta times a KL robustness term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import Objective, kl_divergence
from convertsnn.objectives.inner import InnerPGD
from convertsnn.objectives.registry import register_objective


@register_objective
class TRADES(Objective):
    """``CE(f(x), y) + beta * mean_B KL(f(x) || f(x_adv))``, beta 6 by default.

    The inner attack is PGD on ``KL(f(x) || f(x'))`` from ``x + 0.001 N(0, I)``; gradients of the
    loss flow through both ``f(x)`` and ``f(x_adv)``, as in the reference code.
    """

    name = "trades"
    default_beta = 6.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.random_start:
            raise ConvertSNNError(
                f"objective '{self.name}' needs its random start: the KL gradient is zero at x"
            )

    def attack(self, model, x, y, clean_logits):
        return InnerPGD(model, self.eps, self.steps, self.alpha, "kl", "normal")(x, clean_logits)

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        clean_logits = model(x)
        adv_logits = model(x_adv)
        ce = F.cross_entropy(clean_logits, y)
        kl = kl_divergence(clean_logits, adv_logits).mean()
        return ce + self.beta * kl, adv_logits, {"ce_clean": ce.item(), "kl": kl.item()}
