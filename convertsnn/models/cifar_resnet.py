"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56/110 and the VNN-COMP
ResNet-2B and ResNet-4B.

``resnet20``/``resnet32``/``resnet44``/``resnet56``/``resnet110`` use the key layout of github akamaster/pytorch_resnet_cifar10
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
def resnet44(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage)."""
    return CifarResNet(7, num_classes, shortcut)


@register_model
def resnet56(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    return CifarResNet(9, num_classes, shortcut)


@register_model
def resnet110(num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage, 1.7M parameters)."""
    return CifarResNet(18, num_classes, shortcut)


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


class VnnCompResNet(nn.Module):
    """The VNN-COMP 2021 CIFAR-10 ResNets (no BatchNorm, biases everywhere, 32x32 inputs).

    conv 3->``planes`` stride 2 -> ReLU -> ``stages`` stages of two blocks each (``2 * planes``
    channels, the first block of each stage with stride 2 and a 1x1 shortcut) -> flatten ->
    linear1 100 -> ReLU -> linear2. Keys match github stanleybak/vnncomp2021,
    benchmarks/cifar10_resnet: ResNet-2B is ``planes=8, stages=1`` (``layer1``), ResNet-4B
    ``planes=16, stages=2`` (``layer1``, ``layer2``; 14,436 ReLUs, as the benchmark states).
    """

    def __init__(self, planes: int, stages: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, planes, 3, 2, 1)
        width, size = 2 * planes, 16
        for stage in range(1, stages + 1):
            blocks = [_Resnet2bBlock(planes if stage == 1 else width, width, 2)]
            self.add_module(
                f"layer{stage}", nn.Sequential(*blocks, _Resnet2bBlock(width, width, 1))
            )
            size //= 2
        self.stages = stages
        self.linear1 = nn.Linear(width * size * size, 100)
        self.linear2 = nn.Linear(100, num_classes)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        for stage in range(1, self.stages + 1):
            out = getattr(self, f"layer{stage}")(out)
        return self.linear2(F.relu(self.linear1(out.flatten(1))))


@register_model
def resnet2b(num_classes: int = 10) -> VnnCompResNet:
    """VNN-COMP 2021 ResNet-2B (about 0.1M parameters), see :class:`VnnCompResNet`."""
    return VnnCompResNet(8, 1, num_classes)


@register_model
def resnet4b(num_classes: int = 10) -> VnnCompResNet:
    """VNN-COMP 2021 ResNet-4B (2 stages of 2 blocks, 16 -> 32 channels), see
    :class:`VnnCompResNet`."""
    return VnnCompResNet(16, 2, num_classes)
