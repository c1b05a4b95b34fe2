"""The RSSNN training loss (seed 003: Ding et al., ICML 2024, github DingJianhao/stable-snn).

``0.5 * CE(f(x), y) + 0.5 * CE(f(x'), y) + rho * V``: half clean, half perturbed cross-entropy
plus the MS-MPPD term ``V`` of :mod:`convertsnn.objectives.mppd`, computed from the last spiking
layer's currents recorded during the same two forward passes (no extra pass; with a stochastic
encoder both passes draw the same noise). ``rho`` is the
objective's ``beta`` (default 1, the paper's). Two perturbation modes, as in the paper's code:

- ``rssnn-fgsm``: FGSM on CE from ``x + 0.001 N(0, I)``, one step of ``eps`` (4/255 there),
  clipped to the eps-ball and [0, 1];
- ``rssnn-gaussian``: ``x + eps * N(0, I)`` (``eps`` is the noise std, 8/255 there), clipped to
  [0, 1].

The DLIF neuron (``--neuron dlif``) and the AT+Reg weight projection (``--weight-projection``)
are separate finetuning settings, so RSSNN is e.g. ``--objective rssnn-fgsm --eps 4/255
--neuron dlif --weight-projection 5e-4 --weight-decay 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.attacks.fgsm import FGSM
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import Objective
from convertsnn.objectives.mppd import last_spiking_layer, layer_perturbation, recorded_currents
from convertsnn.objectives.registry import register_objective
from convertsnn.snn.encoding import same_noise_next

CLEAN_SHARE = 0.5  # the paper's kappa: weight of the clean cross-entropy


@register_objective
class RSSNNFGSM(Objective):
    """RSSNN with FGSM perturbations (the paper's AT mode)."""

    name = "rssnn-fgsm"
    default_beta = 1.0
    default_steps = 1

    def step_size(self, alpha: float | None) -> float:
        """One step of size eps (the recorded settings say so); steps and alpha are fixed."""
        if self.steps != 1 or alpha is not None:
            raise ConvertSNNError(
                f"objective '{self.name}' is one perturbation of size eps; leave out "
                "--attack-steps and --alpha"
            )
        return self.eps

    def attack(self, model, x, y, clean_logits):
        start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1) if self.random_start else x
        return FGSM(model, self.eps)(start, y).sub(x).clamp(-self.eps, self.eps).add(x).clamp(0, 1)

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        neuron = last_spiking_layer(model)
        with recorded_currents(neuron) as calls:
            with same_noise_next(x.device):
                clean_logits = model(x)
            adv_logits = model(x_adv)
        ce_clean = F.cross_entropy(clean_logits, y)
        ce_adv = F.cross_entropy(adv_logits, y)
        v = layer_perturbation(neuron, calls[0], calls[1])
        loss = CLEAN_SHARE * ce_clean + (1 - CLEAN_SHARE) * ce_adv + self.beta * v
        terms = {"ce_clean": ce_clean.item(), "ce_adv": ce_adv.item(), "mppd": v.item()}
        return loss, adv_logits, terms


@register_objective
class RSSNNGaussian(RSSNNFGSM):
    """RSSNN with Gaussian perturbations ``x + eps * N(0, I)`` (the paper's Gaussian mode)."""

    name = "rssnn-gaussian"
    gradient_attack = False

    def attack(self, model, x, y, clean_logits):
        return (x + self.eps * torch.randn_like(x)).clamp(0, 1)
