"""Channel-wise thresholds: one threshold per channel, the p-th percentile of its activations.

Kim et al. 2020 (Spiking-YOLO, "channel-wise data-based normalization") and SpikingJelly's
``RateCodingRecipe(channel_wise=True)``: channels of one layer can differ in scale by orders of
magnitude, so a single layer threshold makes the quiet channels fire rarely and lose precision
at low T. The neuron output is ``theta_c * spike`` so the next layer sees each channel at its
own scale. Channels that never activated on the calibration data get the layer-wide percentile.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.observers import observe_activations
from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    parse_options,
    register_calibration,
)
from convertsnn.errors import ConvertSNNError


@register_calibration
class ChannelWise(CalibrationMethod):
    """``channelwise[:P]``: per-channel P-th percentile of positive activations (default 99.9)."""

    name = "channelwise"

    def __init__(self, arg: str | None = None) -> None:
        self.p = parse_options(self.name, arg, {"p": 99.9})["p"]
        if not 0 < self.p <= 100:
            raise ConvertSNNError(f"percentile must be in (0, 100], got {self.p}")

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        observers = observe_activations(ann, activations, loader, device, per_channel=True)
        thresholds = {}
        for name, obs in observers.items():
            theta = obs.channel_percentile(self.p)
            fallback = obs.percentile(self.p)
            thresholds[name] = torch.where(torch.isnan(theta) | (theta <= 0), fallback, theta)
        return thresholds

    def __str__(self) -> str:
        return f"channelwise:{self.p:g}"
