"""Small CNNs for MNIST-sized inputs (the demo model)."""

from __future__ import annotations

from torch import nn

from convertsnn.models.registry import register_model


@register_model
def mnist_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Sequential:
    """ReLU CNN for 28x28 inputs: conv5, avgpool, conv5, avgpool, two linear layers.

    Layers: conv 5x5 (width) -> ReLU -> avgpool 2 -> conv 5x5 (2*width) -> ReLU -> avgpool 2 ->
    flatten (2*width*4*4) -> linear 64 -> ReLU -> linear num_classes. About 46k parameters at
    width 16.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(width, 2 * width, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
