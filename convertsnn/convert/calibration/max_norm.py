"""Max-norm calibration: threshold = the largest activation seen (Diehl et al. 2015)."""

from __future__ import annotations

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.observers import observe_activations
from convertsnn.convert.calibration.registry import CalibrationMethod, register_calibration


@register_calibration
class MaxNorm(CalibrationMethod):
    """``max``: each layer's threshold is its maximum activation on the calibration data."""

    name = "max"

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        observers = observe_activations(ann, activations, loader, device)
        return {name: obs.max.cpu() for name, obs in observers.items()}
