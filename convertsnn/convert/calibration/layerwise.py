"""Seed 001's threshold calibration: layer by layer on the simulated SNN, then scaled down.

Özdenizci & Legenstein, TMLR 2024 ("Adversarially robust spiking neural networks through
conversion"; github IGITUGraz/RobustSNNConversion): the SNN is simulated for T=100 steps; layer
by layer, in order, each threshold is set to the 99.7th percentile of the layer's input current
(all elements of the current over the T steps, the max over mini-batches), with the earlier
layers already calibrated; finally every threshold is multiplied by a scale factor (0.3 by
default) so the network fires enough at low T.

Differences from the seed's code (see docs/conversion.md): our neurons output ``theta * spike``
(the seed: binary spikes) and BatchNorm is folded into the convs (the seed keeps BN and
re-estimates its statistics on spikes). With binary spikes a smaller threshold also scales up
the next layer's input, which the re-estimated BN absorbs; with ``theta * spike`` outputs the
scale factor only lowers the layer's clipping point. The simulation uses the converted model's
own neuron settings (the seed: reset to zero and membrane starting at 0 by default).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    parse_options,
    register_calibration,
)
from convertsnn.convert.calibration.sequential import calibration_images, run_layer_by_layer
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron


def batch_percentile(current: torch.Tensor, timesteps: int, batch: int, q: float) -> float:
    """Max over mini-batches of ``batch`` images of the q-th percentile of all current values
    (seed 001's statistic; ``current`` is ``[T*B, ...]``, time-major)."""
    seq = current.view(timesteps, -1, *current.shape[1:])
    best = float("-inf")
    for start in range(0, seq.shape[1], batch):
        values = seq[:, start : start + batch].reshape(-1)
        k = 1 + round(q / 100.0 * (values.numel() - 1))
        best = max(best, values.kthvalue(k).values.item())
    return best


@register_calibration
class LayerWise(CalibrationMethod):
    """``layerwise[:scale=0.3,steps=100,p=99.7,images=128,batch=64]`` (seed 001)."""

    name = "layerwise"
    defaults: ClassVar[dict] = {"scale": 0.3, "steps": 100, "p": 99.7, "images": 128, "batch": 64}

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, self.defaults)
        self.scale, self.p = options["scale"], options["p"]
        self.steps, self.images, self.batch = options["steps"], options["images"], options["batch"]
        if not (self.scale > 0 and 0 < self.p <= 100):
            raise ConvertSNNError(f"layerwise needs scale > 0 and p in (0, 100], got '{arg}'")
        if min(self.steps, self.images, self.batch) < 1:
            raise ConvertSNNError(f"layerwise needs steps, images and batch >= 1, got '{arg}'")

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Placeholders: the real thresholds are set on the SNN in :meth:`correct_snn`."""
        return {name: torch.tensor(1.0) for name in activations}

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        images = calibration_images(loader, self.images)

        def calibrate(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
            theta = batch_percentile(current, self.steps, self.batch, self.p)
            if not theta > 0:
                raise ConvertSNNError(
                    f"layerwise calibration: the input current of '{name}' has a {self.p:g}th "
                    f"percentile of {theta:.3g} (the layer barely activates); use more images "
                    "or another calibration"
                )
            neuron.threshold.data = torch.full_like(neuron.threshold.data, theta)
            return neuron(current)

        run_layer_by_layer(snn, images, self.steps, calibrate, device, desc="layerwise T=100")
        for neuron in snn.neurons():
            neuron.threshold.data *= self.scale

    def __str__(self) -> str:
        return f"layerwise:scale={self.scale:g},steps={self.steps},p={self.p:g}"
