"""The same SNN written on another scale: every spiking layer's input and threshold times ``c``,
its output divided by ``c`` (as if the layer before had its weights and bias scaled by ``c`` and
the layer after by ``1 / c``). The function is unchanged; gradients that depend on the scale
(absolute surrogate widths) are not, which is what the reparametrisation check looks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork


@contextmanager
def rescaled(snn: SpikingNetwork, factor: float) -> Iterator[SpikingNetwork]:
    """``snn`` with every spiking layer rescaled by ``factor`` inside the block (restored on
    exit); thresholds, their lower clamp and the membrane scale with it."""
    if not factor > 0:
        raise ConvertSNNError(f"rescale factor must be > 0, got {factor}")
    saved, handles = [], []

    def scale_input(module, args):
        return (args[0] * factor, *args[1:])

    def unscale_output(module, args, output: torch.Tensor) -> torch.Tensor:
        return output / factor

    try:
        for neuron in snn.neurons():
            saved.append((neuron, neuron.threshold.detach().clone(), neuron.min_threshold))
            with torch.no_grad():
                neuron.threshold.mul_(factor)
            neuron.min_threshold *= factor
            handles.append(neuron.register_forward_pre_hook(scale_input))
            handles.append(neuron.register_forward_hook(unscale_output))
        yield snn
    finally:
        for handle in handles:
            handle.remove()
        for neuron, threshold, min_threshold in saved:
            with torch.no_grad():
                neuron.threshold.copy_(threshold)
            neuron.min_threshold = min_threshold
