"""VGG with BatchNorm for small images (Simonyan & Zisserman 2015; the CIFAR variant of QCFS).

``features`` holds conv3x3-BN-ReLU blocks with 2x2 pooling between stages; ``classifier`` is
flatten -> linear 512*w -> ReLU -> Dropout -> linear -> ReLU -> Dropout -> linear, with ``w``
the spatial size left after the pools (``input_size / 32``: 1 for CIFAR's 32x32, 2 for
TinyImageNet's 64x64). ``pool="max"`` (the usual VGG) or
``"avg"`` (as in QCFS and seed 001, which avoid max-pooling for conversion). ``width`` scales
every layer (1.0 = 64..512 channels); ``hidden`` is the classifier's width.
"""

from __future__ import annotations

from torch import nn

from convertsnn.models.registry import register_model

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"],
    "vgg13": [64, 64, "P", 128, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"],
    "vgg16": [
        64,
        64,
        "P",
        128,
        128,
        "P",
        256,
        256,
        256,
        "P",
        512,
        512,
        512,
        "P",
        512,
        512,
        512,
        "P",
    ],
}


class VGG(nn.Module):
    """VGG-BN: ``features`` (conv-BN-ReLU, pools), then a three-layer ``classifier``."""

    def __init__(
        self,
        config: list[int | str],
        num_classes: int = 10,
        pool: str = "max",
        width: float = 1.0,
        hidden: int = 512,
        dropout: float = 0.5,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        side = input_size // 2 ** config.count("P")
        if side < 1 or side * 2 ** config.count("P") != input_size:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "P":
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                continue
            out = max(1, round(int(item) * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def vgg11_bn(**kwargs) -> VGG:
    """VGG-11 with BatchNorm (8 conv layers, 3 linear); keyword arguments as :class:`VGG`."""
    return VGG(CONFIGS["vgg11"], **kwargs)


@register_model
def vgg13_bn(**kwargs) -> VGG:
    """VGG-13 with BatchNorm (10 conv layers, 3 linear); keyword arguments as :class:`VGG`."""
    return VGG(CONFIGS["vgg13"], **kwargs)


@register_model
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 with BatchNorm (13 conv layers, 3 linear); keyword arguments as :class:`VGG`."""
    return VGG(CONFIGS["vgg16"], **kwargs)
