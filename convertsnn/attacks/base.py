"""Base class of all attacks: pixel-space [0, 1] inputs, L-inf or L2 balls, EOT gradients.

After torchattacks: the base class owns the boring parts (eval mode, projection, losses, EOT),
subclasses write :meth:`Attack.perturb`. Gradients through an SNN come from whatever gradient
mode the model is set to (see :meth:`SpikingNetwork.gradient`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.errors import ConvertSNNError

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss per sample (Croce & Hein 2020), ``[B]``.

    ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``; with fewer than 3 classes the scale is 1.
    """
    sorted_logits, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    margin = true - others.max(dim=1).values
    scale = (
        sorted_logits[:, -1] - sorted_logits[:, -3] + 1e-12
        if logits.shape[1] >= 3
        else torch.ones_like(margin)
    )
    return -margin / scale


def per_sample_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss to maximise, per sample ``[B]``: ``ce`` or ``dlr``."""
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return dlr_loss(logits, y)


class Attack:
    """An untargeted evasion attack on a classifier taking images in [0, 1].

    Args:
        model: returns logits ``[B, K]`` for images ``[B, C, H, W]``.
        eps: radius of the threat model (e.g. 8/255 for L-inf).
        norm: ``"linf"`` or ``"l2"``.
        eot: gradient samples averaged per step (for stochastic models; 1 otherwise).
    """

    name = "attack"

    def __init__(self, model: nn.Module, eps: float, norm: str = "linf", eot: int = 1) -> None:
        if not eps >= 0:
            raise ConvertSNNError(f"eps must be >= 0, got {eps}")
        if norm not in NORMS:
            raise ConvertSNNError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
        if eot < 1:
            raise ConvertSNNError(f"eot must be at least 1, got {eot}")
        self.model = model
        self.eps = float(eps)
        self.norm = norm
        self.eot = int(eot)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for ``(x, y)``; the model is run in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            x_adv = self.perturb(x.detach(), y.detach())
        finally:
            self.model.train(was_training)
        return self.project(x_adv.detach(), x.detach())

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps-ball around ``x`` and the image box [0, 1]."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0, 1)

    def step(self, grad: torch.Tensor, size: float) -> torch.Tensor:
        """Steepest-ascent step of length ``size`` for the norm (sign for L-inf)."""
        if self.norm == "linf":
            return size * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        return size * grad / norms.view(-1, *([1] * (grad.dim() - 1)))

    def random_start(self, x: torch.Tensor) -> torch.Tensor:
        """A uniform random point in the ball (L-inf) or on a random direction (L2)."""
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            delta = torch.randn_like(x)
            norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
            radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
            delta = delta / norms * radius * self.eps
        return (x + delta).clamp(0, 1)

    def gradient(
        self, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input gradient of the summed loss, averaged over ``eot`` draws.

        Returns ``(grad, per-sample loss, logits)``; loss and logits are EOT means.
        """
        grad = torch.zeros_like(x)
        total_loss = torch.zeros(x.shape[0], device=x.device)
        total_logits = None
        for _ in range(self.eot):
            x_in = x.clone().requires_grad_(True)
            logits = self.model(x_in)
            losses = per_sample_loss(loss, logits, y)
            (g,) = torch.autograd.grad(losses.sum(), x_in)
            grad += g
            total_loss += losses.detach()
            total_logits = (
                logits.detach() if total_logits is None else total_logits + logits.detach()
            )
        return grad / self.eot, total_loss / self.eot, total_logits / self.eot

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels (EOT mean of the logits for stochastic models)."""
        with torch.no_grad():
            logits = sum(self.model(x) for _ in range(self.eot)) / self.eot
        return logits.argmax(dim=1)
