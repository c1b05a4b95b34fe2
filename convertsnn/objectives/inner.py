"""The inner maximisation of adversarial training: PGD that returns its last iterate.

Unlike the evaluation attack :class:`convertsnn.attacks.PGD` (which keeps, per sample, the
first example that fools the model), training uses a fixed number of steps and the final
iterate, as in PGD-AT (Madry et al., ICLR 2018), TRADES (Zhang et al., ICML 2019) and MART
(Wang et al., ICLR 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.base import Attack
from convertsnn.attacks.rfgsm import kl_gradient
from convertsnn.errors import ConvertSNNError

STARTS = ("uniform", "normal", "none")


class InnerPGD(Attack):
    """L-inf sign-gradient ascent for ``steps`` steps of ``alpha``, projected after each step.

    Args:
        model, eps: see :class:`Attack`.
        steps, alpha: number and size of the steps.
        loss: ``"ce"`` (labels) or ``"kl"``: the second argument of the call is then the
            reference logits ``[B, K]`` and the attack maximises
            ``KL(softmax(ref) || softmax(f(x')))`` (TRADES).
        start: ``"uniform"`` in the eps-ball (Madry et al.), ``"normal"`` = ``x + 0.001 N(0, I)``
            (TRADES and MART reference code) or ``"none"`` (start at ``x``).
    """

    name = "inner-pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        steps: int,
        alpha: float,
        loss: str = "ce",
        start: str = "uniform",
    ) -> None:
        super().__init__(model, eps)
        if loss not in ("ce", "kl"):
            raise ConvertSNNError(f"unknown inner-attack loss '{loss}'; use ce or kl")
        if start not in STARTS:
            raise ConvertSNNError(f"unknown start '{start}'; choose one of {', '.join(STARTS)}")
        self.steps, self.alpha, self.loss, self.start = int(steps), float(alpha), loss, start

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.start == "uniform":
            x_adv = self.random_start(x)
        elif self.start == "normal":
            x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            if self.loss == "kl":
                grad = kl_gradient(self.model, x_adv, y)
            else:
                grad = self.gradient(x_adv, y, "ce")[0]
            x_adv = self.project(x_adv + self.step(grad, self.alpha), x)
        return x_adv
