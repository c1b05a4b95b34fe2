"""Threshold-relative surrogate gradients for BPTT finetuning of converted SNNs.

A converted neuron integrates currents in the source ANN's activation units and fires at its
calibrated threshold ``theta`` (often 5-10 for CIFAR nets), and emits ``theta * spike``. With a
surrogate of fixed width ``g`` on ``x = u - theta`` every layer multiplies the gradient by up to
``theta / g`` and every reset-by-subtraction step by up to ``theta / g - 1``, so BPTT gradients
explode with depth and time (measured on the converted ResNet-2B, thresholds 6-12: gradient
norm 4e3 for weights of norm 3-11; SGD at seed 001's lr 1e-3 brings it to chance level within an
epoch; threshold-relative: gradient norm about 4).

Seed 001 (Özdenizci & Legenstein, TMLR 2024) emits binary spikes after BatchNorm, with thresholds
of order one, so its triangle surrogate of width 1 spans about one threshold. The equivalent here
is the surrogate applied to the threshold-normalised membrane ``(u - theta) / theta``:
``dS/du = f'((u - theta) / theta) / theta``, e.g. a triangle of width ``g * theta``. Then a layer's
gain ``theta * dS/du`` and the reset path ``1 - theta * dS/du`` stay within [0, 1] for
``triangle:1``. The forward pass is unchanged.

This is the default scale of every :class:`~convertsnn.snn.surrogate.Surrogate` (``absolute``
False); finetuning with ``surrogate_scale="absolute"`` switches it off for the run. Either way the
saved file records the surrogate the model was trained with (``"triangle:1"`` or
``"triangle:1:abs"``), so an attack's ``native`` gradient mode is the training surrogate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from convertsnn.snn.network import SpikingNetwork

SURROGATE_SCALES = ("threshold", "absolute")


@contextmanager
def surrogate_scale(snn: SpikingNetwork, scale: str = "threshold") -> Iterator[SpikingNetwork]:
    """Every neuron's own surrogate on the given scale inside the block (restored on exit)."""
    saved = {neuron: neuron.surrogate for neuron in snn.neurons()}
    for neuron, surrogate in saved.items():
        neuron.surrogate = replace(surrogate, absolute=scale == "absolute")
    try:
        yield snn
    finally:
        for neuron, surrogate in saved.items():
            neuron.surrogate = surrogate


def threshold_relative(snn: SpikingNetwork):
    """Every neuron's own surrogate, threshold-relative, inside the block (restored on exit)."""
    return surrogate_scale(snn, "threshold")
