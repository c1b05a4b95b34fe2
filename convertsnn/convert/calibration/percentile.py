"""Percentile calibration: threshold = the p-th percentile of positive activations.

Rueckauer et al. 2017 ("Conversion of continuous-valued deep networks to efficient event-driven
networks"); like their SNN toolbox, the percentile is over the non-zero activations.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.observers import observe_activations
from convertsnn.convert.calibration.registry import CalibrationMethod, register_calibration
from convertsnn.errors import ConvertSNNError


@register_calibration
class Percentile(CalibrationMethod):
    """``percentile[:P]``: threshold = P-th percentile of each layer's positive activations."""

    name = "percentile"

    def __init__(self, arg: str | None = None) -> None:
        try:
            self.p = 99.99 if arg is None else float(arg)
        except ValueError:
            raise ConvertSNNError(f"percentile must be a number, got '{arg}'") from None
        if not 0 < self.p <= 100:
            raise ConvertSNNError(f"percentile must be in (0, 100], got {self.p}")

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        observers = observe_activations(ann, activations, loader, device)
        return {name: obs.percentile(self.p) for name, obs in observers.items()}

    def __str__(self) -> str:
        return f"percentile:{self.p:g}"
