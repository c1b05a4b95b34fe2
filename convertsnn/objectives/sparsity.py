"""Gradient sparsity regularisation "SR" (seed 000: Liu et al., ICML 2024,
github putshua/gradient_reg_defense).

An SNN's gap between accuracy under random and under adversarial perturbation is bounded by the
sparsity of the input gradient of its true-vs-rival probability; SR penalises that gradient's
L1 norm. As in the paper's code, with ``z`` the logits on the objective's ``x_adv``::

    f(x) = sigmoid(z_y - z_j*),   j* = argmax_{j != y} z_j   (fixed from the first pass)
    v    = sign(grad_x f(x))      (detached)
    R    = mean_batch( ((f(x + h v) - f(x)) / h)^2 ),   h = 0.01

a finite-difference estimate of ``||grad_x f||_1^2`` (the directional derivative along
``sign(g)`` is ``||g||_1``) that needs no second-order gradients: two forward passes, one
input-gradient pass, and the parameter gradient flows through both ``f`` values. The paper's
lambda was not published (code defaults 0 / 0.001) and must be swept; the weight here is
lambda, e.g. ``--regularizer sparsity:0.001``. With a stochastic encoder both passes see the
same noise draw, so the difference measures the input change only.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.objectives.base import ObjectiveOutput
from convertsnn.objectives.regularizers import Regularizer, register_regularizer
from convertsnn.snn.encoding import same_noise_next

STEP = 0.01  # the finite-difference step h (pixel units), the paper's


def rival_classes(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmax_{j != y} z_j`` per sample, ``[B]``."""
    others = logits.detach().clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return others.argmax(dim=1)


def true_vs_rival(logits: torch.Tensor, y: torch.Tensor, rival: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z_y - z_rival)`` per sample, ``[B]``."""
    margin = logits.gather(1, y[:, None]) - logits.gather(1, rival[:, None])
    return torch.sigmoid(margin.squeeze(1))


@register_regularizer
class GradientSparsity(Regularizer):
    """SR on ``out.x_adv``: ``mean_B ((f(x + h sign(g)) - f(x)) / h)^2``."""

    name = "sparsity"
    default_weight = 0.001

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        point = out.x_adv.detach().requires_grad_(True)
        with same_noise_next(point.device):
            logits = model(point)
        rival = rival_classes(logits, y)
        f = true_vs_rival(logits, y, rival)
        (grad,) = torch.autograd.grad(f.sum(), point, retain_graph=True)
        shifted = true_vs_rival(model(point.detach() + STEP * grad.sign()), y, rival)
        return ((shifted - f) / STEP).pow(2).mean()
