"""RSLAD: Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma & Jiang, ICCV 2021, "Revisiting
Adversarial Robustness Distillation: Robust Soft Labels Make Student Better"; github
zibojia/RSLAD), from the SNN's robust source ANN."""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.objectives.base import kl_divergence
from convertsnn.objectives.distill import DistillationObjective
from convertsnn.objectives.inner import InnerPGD
from convertsnn.objectives.registry import register_objective


@register_objective
class RSLAD(DistillationObjective):
    """``beta * mean_B KL(A(x) || S(x_adv)) + (1 - beta) * mean_B KL(A(x) || S(x))``.

    ``A(x)``: the frozen source ANN's soft labels on the CLEAN images, the target of both the
    adversarial and the clean SNN output; ``KL(p || q)`` is ``KL(softmax(p) || softmax(q))``
    (``nn.KLDivLoss(log_softmax(S), softmax(A))`` as in the reference code). ``beta`` defaults
    to the paper's 5/6. The inner attack maximises ``KL(A(x) || S(x'))`` by PGD from
    ``x + 0.001 N(0, I)`` (10 steps of ``2.5 * eps / steps``, i.e. 2/255 at 8/255, as the
    reference). The reference averages the KL over the classes as well as the batch (a factor
    1/10 on CIFAR-10, kept for CIFAR-100); here it is the batch mean, as for TRADES.
    """

    name = "rslad"
    default_beta = 5 / 6

    def attack(self, model, x, y, clean_logits):
        start = "normal" if self.random_start else "none"
        attack = InnerPGD(model, self.eps, self.steps, self.alpha, "kl", start)
        return attack(x, self.teacher_logits(x))

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        soft_labels = self.teacher_logits(x)
        adv_logits = model(x_adv)
        clean_logits = model(x)
        kl_adv = kl_divergence(soft_labels, adv_logits).mean()
        kl_clean = kl_divergence(soft_labels, clean_logits).mean()
        loss = self.beta * kl_adv + (1 - self.beta) * kl_clean
        return (
            loss,
            adv_logits,
            {"kl_teacher_adv": kl_adv.item(), "kl_teacher_clean": kl_clean.item()},
        )
