"""FGSM: one gradient-sign step of size eps (Goodfellow et al. 2015)."""

from __future__ import annotations

import torch

from convertsnn.attacks.base import Attack


class FGSM(Attack):
    """Fast gradient sign method (L-inf) / fast gradient method (L2), cross-entropy loss.

    Example: ``x_adv = FGSM(model, eps=8/255)(x, y)``.
    """

    name = "fgsm"

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad = self.gradient(x, y)[0]
        return x + self.step(grad, self.eps)
