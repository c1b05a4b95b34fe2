"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings in deep residual networks").

Key-compatible with RobustBench's ``PreActResNet`` (robustbench/model_zoo/architectures/
resnet.py, used by e.g. Wong2020Fast and Rice2020Overfitting): ``conv1``,
``layer{1..4}.{i}.{bn1,conv1,bn2,conv2,shortcut.0}``, optional ``bn`` and ``linear``.

Each block computes ``relu(bn1(x))`` of the residual stream, so its BatchNorm sits after the
previous block's residual add and cannot be folded into a conv: the converter keeps it as a
per-channel affine layer in front of the spiking neuron. ``width`` scales the channels
(64 = the published network) for small tests; it does not change the key layout.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from convertsnn.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut (1x1 conv when the shape changes).

    ``out_shortcut=True`` feeds the shortcut with ``relu(bn1(x))`` instead of ``x``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, out_shortcut: bool = False):
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(out if self.out_shortcut else x)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """conv3x3, four stages of PreActBlocks, [BN-ReLU], 4x4 average pool, linear."""

    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        bn_before_fc: bool = False,
        out_shortcut: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        planes, stages = width, []
        for stage, blocks in enumerate(num_blocks):
            out = width * 2**stage
            layer = []
            for i in range(blocks):
                layer.append(PreActBlock(planes, out, 2 if stage and i == 0 else 1, out_shortcut))
                planes = out
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn: nn.Module | None = nn.BatchNorm2d(planes) if bn_before_fc else None
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


@register_model
def preact_resnet18(
    num_classes: int = 10, bn_before_fc: bool = False, out_shortcut: bool = False, width: int = 64
) -> PreActResNet:
    """PreActResNet-18 as in RobustBench (11.2M parameters at width 64)."""
    return PreActResNet((2, 2, 2, 2), num_classes, bn_before_fc, out_shortcut, width)
