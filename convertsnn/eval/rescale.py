"""The same SNN written on another scale: every spiking layer's input and threshold times ``c``,
its output divided by ``c`` (as if the layer before had its weights and bias scaled by ``c`` and
the layer after by ``1 / c``), with one ``c`` for every layer or one per layer (e.g. the factors
that bring every threshold to 1). The function is unchanged; gradients that depend on the scale
(absolute surrogate widths) are not, which is what the reparametrisation check looks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron


def unit_threshold_factors(snn: SpikingNetwork) -> dict[IFNeuron, float]:
    """Per spiking layer, the factor that brings its mean threshold to 1."""
    return {n: 1.0 / float(n.threshold.detach().abs().mean().clamp(min=1e-12))
            for n in snn.neurons()}  # fmt: skip


@contextmanager
def rescaled(
    snn: SpikingNetwork, factor: float | dict[IFNeuron, float]
) -> Iterator[SpikingNetwork]:
    """``snn`` with every spiking layer rescaled by ``factor`` (one for all, or one per
    neuron module) inside the block (restored on exit); thresholds, their lower clamp and the
    membrane scale with it."""
    factors = factor if isinstance(factor, dict) else {n: factor for n in snn.neurons()}
    if not all(f > 0 for f in factors.values()):
        raise ConvertSNNError(f"rescale factors must be > 0, got {factor}")
    saved, handles = [], []

    def scale_input(module, args):
        return (args[0] * factors[module], *args[1:])

    def unscale_output(module, args, output: torch.Tensor) -> torch.Tensor:
        return output / factors[module]

    try:
        for neuron, c in factors.items():
            saved.append((neuron, neuron.threshold.detach().clone(), neuron.min_threshold))
            with torch.no_grad():
                neuron.threshold.mul_(c)
            neuron.min_threshold *= c
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
