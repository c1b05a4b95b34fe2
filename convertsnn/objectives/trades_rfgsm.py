"""Seed 001's SNN finetuning loss (Özdenizci & Legenstein, TMLR 2024, github
IGITUGraz/RobustSNNConversion ``main_train.py --attack rfgsm --trades_beta 2``)."""

from __future__ import annotations

from convertsnn.attacks.rfgsm import RFGSM
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.registry import register_objective
from convertsnn.objectives.trades import TRADES


@register_objective
class TradesRFGSM(TRADES):
    """The TRADES loss ``CE(f(x), y) + beta * mean_B KL(f(x) || f(x_adv))`` with one RFGSM step.

    RFGSM on the KL to the clean output: a random sign step of ``alpha`` (default ``eps / 2``),
    one gradient-sign step of ``eps - alpha``, clipped to the eps-ball. Seed 001 uses eps 2/255,
    alpha 1/255 and beta 2. One step only; the random step is part of the method.
    """

    name = "trades-rfgsm"
    default_beta = 2.0
    default_steps = 1

    def step_size(self, alpha: float | None) -> float:
        """The random step: ``alpha``, default ``eps / 2``, at most eps; one step only."""
        if self.steps != 1:
            raise ConvertSNNError(
                f"objective '{self.name}' takes one attack step, got {self.steps}"
            )
        alpha = self.eps / 2 if alpha is None else float(alpha)
        if alpha > self.eps:
            raise ConvertSNNError(
                f"RFGSM's random step alpha must be at most eps={self.eps:g}, got {alpha:g}"
            )
        return alpha

    def attack(self, model, x, y, clean_logits):
        return RFGSM(model, self.eps, alpha=self.alpha, loss="kl")(x, clean_logits)
