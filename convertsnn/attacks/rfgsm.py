"""R+FGSM: a random step, then one gradient step (Tramèr et al., ICLR 2018, "Ensemble
Adversarial Training"; used with a KL loss as the finetuning attack of seed 001, Özdenizci &
Legenstein, TMLR 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.attacks.base import LOSSES, Attack
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError

RFGSM_LOSSES = (*LOSSES, "kl")


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(ref) || softmax(logits))`` per sample, ``[B]``.

    This is ``nn.KLDivLoss`` with ``input=log_softmax(logits)`` and ``target=softmax(ref)``, as
    in TRADES (Zhang et al. 2019) and seed 001; gradients flow into both arguments.
    """
    ref_log_probs = F.log_softmax(ref_logits, dim=1)
    return (ref_log_probs.exp() * (ref_log_probs - F.log_softmax(logits, dim=1))).sum(dim=1)


def kl_gradient(
    model: nn.Module, x: torch.Tensor, ref_logits: torch.Tensor, draws: int = 1
) -> torch.Tensor:
    """Input gradient of ``sum_B KL(softmax(ref) || softmax(model(x)))``, averaged over
    ``draws`` forward passes (EOT), in the model's own gradient mode."""
    ref_logits = ref_logits.detach()
    grad = torch.zeros_like(x)
    for _ in range(draws):
        x_in = x.clone().requires_grad_(True)
        loss = kl_divergence(ref_logits, model(x_in)).sum()
        grad += torch.autograd.grad(loss, x_in)[0]
    return grad / draws


class RFGSM(Attack):
    """Random step of size ``alpha``, then one steepest-ascent step of ``eps - alpha``.

    L-inf: ``x' = clip(x + alpha * sign(N(0, I)))``,
    ``x_adv = proj_eps(x' + (eps - alpha) * sign(grad_x' loss))``; L2 uses normalised steps.

    Args:
        model, eps, norm, eot, gradient_mode: see :class:`Attack`.
        alpha: size of the random step, in ``[0, eps]``; default ``eps / 2``.
        loss: ``"ce"``, ``"dlr"`` or ``"kl"``. With ``"kl"`` the second argument of the call
            is not labels but reference logits ``[B, K]`` (usually the clean logits ``f(x)``),
            and the attack maximises ``KL(softmax(ref) || softmax(f(x')))`` in the model's own
            gradient mode (``gradient_mode`` must then be left out).

    Examples: ``RFGSM(model, eps=8/255)(x, y)``; seed 001's finetuning attack is
    ``RFGSM(snn, eps=2/255, alpha=1/255, loss="kl")(x, clean_logits)``.
    """

    name = "rfgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        alpha: float | None = None,
        loss: str = "ce",
        gradient_mode: str | GradientMode | None = None,
    ) -> None:
        super().__init__(model, eps, norm, eot, gradient_mode)
        self.alpha = self.eps / 2 if alpha is None else float(alpha)
        if not 0 <= self.alpha <= self.eps:
            raise ConvertSNNError(
                f"RFGSM's random step alpha must be in [0, eps={self.eps:g}], got {self.alpha:g}"
            )
        if loss not in RFGSM_LOSSES:
            raise ConvertSNNError(f"unknown loss '{loss}'; choose one of {', '.join(RFGSM_LOSSES)}")
        if loss == "kl" and gradient_mode is not None:
            raise ConvertSNNError("RFGSM with the KL loss uses the model's own gradient mode")
        self.loss = loss

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_rand = (x + self.step(torch.randn_like(x), self.alpha)).clamp(0, 1)
        if self.loss == "kl":
            grad = kl_gradient(self.model, x_rand, y, self.eot)
        else:
            grad = self.gradient(x_rand, y, self.loss)[0]
        return x_rand + self.step(grad, self.eps - self.alpha)
