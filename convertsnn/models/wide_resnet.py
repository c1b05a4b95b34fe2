"""Pre-activation Wide ResNets (Zagoruyko & Komodakis 2016), e.g. WRN-28-10 and WRN-34-10.

Key-compatible with RobustBench's ``WideResNet`` (robustbench/model_zoo/architectures/
wide_resnet.py, from TRADES; used by many CIFAR-10 Linf entries): ``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, the unused ``sub_block1`` that
some checkpoints carry, final ``bn1`` and ``fc``.

Blocks are pre-activation: ``bn1`` normalises the residual stream (the sum of the previous
block's conv and shortcut), so it stays a BatchNorm layer after conversion. ``relu1``/``relu2``
are in-place ReLU modules as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.models.registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut (1x1 conv if widths differ).

    When the widths differ the shortcut, like the branch, takes ``relu1(bn1(x))``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.add(shortcut, self.conv2(out))


class NetworkBlock(nn.Module):
    """``n`` BasicBlocks; the first one changes width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(n)
            )
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: conv3x3, three NetworkBlocks, BN-ReLU, pool, ``fc``."""

    def __init__(
        self,
        depth: int = 28,
        num_classes: int = 10,
        widen_factor: int = 10,
        sub_block1: bool = False,
        drop_rate: float = 0.0,
        bias_last: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(
                f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 34, ...), got {depth}"
            )
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        if sub_block1:  # unused in forward; present in some checkpoints' state dicts
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model
def wide_resnet(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    sub_block1: bool = False,
    drop_rate: float = 0.0,
    bias_last: bool = True,
) -> WideResNet:
    """Wide ResNet of any depth 6n+4 and width as in RobustBench (default WRN-28-10)."""
    return WideResNet(depth, num_classes, widen_factor, sub_block1, drop_rate, bias_last)


@register_model
def wrn28_10(num_classes: int = 10, sub_block1: bool = False) -> WideResNet:
    """WRN-28-10 (36.5M parameters), the most common RobustBench CIFAR architecture."""
    return WideResNet(28, num_classes, 10, sub_block1)


@register_model
def wrn34_10(num_classes: int = 10, sub_block1: bool = False) -> WideResNet:
    """WRN-34-10 (46.2M parameters), as in TRADES and many RobustBench entries."""
    return WideResNet(34, num_classes, 10, sub_block1)
