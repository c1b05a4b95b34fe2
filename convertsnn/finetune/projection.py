"""The "AT+Reg" weight projection of RSSNN and SNN-RAT (Ding et al., NeurIPS 2022 / ICML 2024).

After every optimiser step each convolution and linear weight, seen as a matrix ``W`` of shape
``[out, in * k * k]``, takes one step towards the nearest orthogonal matrix (the Parseval
retraction of Cisse et al., ICML 2017)::

    W <- (1 + beta) W - beta W W^T W          (beta 5e-4 in seed 003)

which keeps each layer's Lipschitz constant near 1. Differences from the reference code: every
row of every layer is projected (it samples 30 % of the rows of linear layers wider than 200),
and there is no simplex projection of residual mixing weights (converted models have none).
The papers train without weight decay when projecting (``--weight-decay 0``).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def project_weights(model: nn.Module, beta: float) -> None:
    """One Parseval step ``W <- (1 + beta) W - beta W W^T W`` on every Conv/Linear weight
    that learns (``requires_grad``)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
            weight = module.weight.reshape(module.weight.shape[0], -1)
            projected = (1 + beta) * weight - beta * weight @ weight.T @ weight
            module.weight.copy_(projected.view_as(module.weight))
