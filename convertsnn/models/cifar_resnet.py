"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/56 and the VNN-COMP ResNet-2B.

``resnet20``/``resnet32``/``resnet56`` use the key layout of github akamaster/pytorch_resnet_cifar10
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``). ``shortcut="A"``
is the parameter-free shortcut (stride-2 subsampling, zero-padded channels); ``shortcut="B"``
is a 1x1 conv + BN projection (``shortcut.0``/``shortcut.1``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from convertsnn.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded with ``planes // 4`` channels a side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Three stages of ``depth`` BasicBlocks (16, 32, 64 channels), global pool, linear."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes, width, stride, shortcut))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def resnet20(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, 0.27M parameters)."""
    return CifarResNet(3, num_classes, shortcut)


@register_model
def resnet32(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return CifarResNet(5, num_classes, shortcut)


@register_model
def resnet56(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    return CifarResNet(9, num_classes, shortcut)


class _Resnet2bBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride))

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class Resnet2b(nn.Module):
    """VNN-COMP 2021 CIFAR-10 ResNet-2B: no BatchNorm, biases everywhere, 32x32 inputs.

    conv 3->8 stride 2 -> ReLU -> block(8->16, stride 2, 1x1 shortcut) -> block(16->16) ->
    flatten (1024) -> linear1 100 -> ReLU -> linear2. Keys match github stanleybak/vnncomp2021.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.layer1 = nn.Sequential(_Resnet2bBlock(8, 16, 2), _Resnet2bBlock(16, 16, 1))
        self.linear1 = nn.Linear(1024, 100)
        self.linear2 = nn.Linear(100, num_classes)

    def forward(self, x):
        out = self.layer1(F.relu(self.conv1(x)))
        return self.linear2(F.relu(self.linear1(out.flatten(1))))


@register_model
def resnet2b(num_classes: int = 10) -> Resnet2b:
    """VNN-COMP 2021 ResNet-2B (about 0.1M parameters), see :class:`Resnet2b`."""
    return Resnet2b(num_classes)
