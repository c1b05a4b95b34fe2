"""A small DenseNet-BC for 32x32 inputs (Huang et al. 2017, "Densely connected convolutional
networks"): feature maps are concatenated, not added.

Dense layer: BN-ReLU-conv1x1 (4k) -BN-ReLU-conv3x3 (k), its output concatenated to its input.
Transition: BN-ReLU-conv1x1 (compression 0.5) -avgpool 2. Head: BN-ReLU-global pool-linear.
The BatchNorm at the start of each layer normalises a concatenation of earlier outputs, so the
converter keeps it as a per-channel affine layer (as in pre-activation ResNets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.models.registry import register_model


class DenseLayer(nn.Module):
    """Bottleneck dense layer; returns ``cat([x, new_features], dim=1)``."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2, halving width and resolution."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """conv3x3 stem (2k channels), dense stages separated by transitions, BN-ReLU-pool-linear."""

    def __init__(
        self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 12, num_classes: int = 10
    ) -> None:
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                stages.append(DenseLayer(planes, growth))
                planes += growth
            if i < len(blocks) - 1:
                stages.append(Transition(planes, planes // 2))
                planes //= 2
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def densenet_cifar(
    num_classes: int = 10, growth: int = 12, blocks: tuple[int, ...] = (6, 12, 24, 16)
) -> DenseNet:
    """DenseNet-BC-121 layout with growth rate 12 for CIFAR (about 1M parameters)."""
    return DenseNet(tuple(blocks), growth, num_classes)
