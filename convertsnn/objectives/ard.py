"""ARD: Adversarially Robust Distillation (Goldblum, Fowl, Feizi & Goldstein, AAAI 2020; github
goldblum/AdversariallyRobustDistillation), from the SNN's robust source ANN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.objectives.base import kl_divergence
from convertsnn.objectives.distill import DistillationObjective
from convertsnn.objectives.pgd_at import PGDAT
from convertsnn.objectives.registry import register_objective


@register_objective
class ARD(DistillationObjective):
    """``beta * t^2 * mean_B KL(softmax(A(x)/t) || softmax(S(x_adv)/t)) + (1 - beta) * CE(S(x), y)``.

    ``A`` is the frozen source ANN (:func:`~convertsnn.objectives.distill.frozen_source_ann`),
    ``S`` the SNN, ``t`` the temperature (default 30) and ``beta`` the paper's alpha (default 1,
    the reference code's, which leaves out the clean cross-entropy). The inner attack is the
    reference code's: PGD on the SNN's cross-entropy from a uniform random start (10 steps of
    ``2.5 * eps / steps``, i.e. 2/255 at 8/255). The reference averages the KL over the classes
    as well as the batch (PyTorch's default reduction, a factor 1/10 on CIFAR-10); here it is
    the batch mean, as for TRADES and ``distill``.
    """

    name = "ard"
    default_beta = 1.0
    default_temperature = 30.0

    attack = PGDAT.attack  # PGD on CE from a uniform random start

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        t = self.temperature
        adv_logits = model(x_adv)
        kl = t * t * kl_divergence(self.teacher_logits(x) / t, adv_logits / t).mean()
        loss, terms = self.beta * kl, {"kl_teacher_adv": kl.item()}
        if self.beta < 1:
            ce = F.cross_entropy(model(x), y)
            loss, terms["ce_clean"] = loss + (1 - self.beta) * ce, ce.item()
        return loss, adv_logits, terms
