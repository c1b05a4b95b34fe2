"""Channel-wise thresholds: one threshold per channel, the p-th percentile of its activations.

Kim et al. 2020 (Spiking-YOLO, "channel-wise data-based normalization") and SpikingJelly's
``RateCodingRecipe(channel_wise=True)``: channels of one layer can differ in scale by orders of
magnitude, so a single layer threshold makes the quiet channels fire rarely and lose precision
at low T. The neuron output is ``theta_c * spike`` so the next layer sees each channel at its
own scale. Channels that never activated on the calibration data get the layer-wide percentile.
"""

from __future__ import annotations

import torch

from convertsnn.convert.calibration.observers import ActivationObserver
from convertsnn.convert.calibration.percentile import Percentile
from convertsnn.convert.calibration.registry import register_calibration


@register_calibration
class ChannelWise(Percentile):
    """``channelwise[:P]``: per-channel P-th percentile of positive activations (default 99.9)."""

    name = "channelwise"
    default_p = 99.9
    per_channel = True

    def statistic(self, observer: ActivationObserver) -> torch.Tensor:
        theta = observer.channel_percentile(self.p)
        fallback = observer.percentile(self.p)
        return torch.where(torch.isnan(theta) | (theta <= 0), fallback, theta)
