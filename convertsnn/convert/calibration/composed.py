"""A method applied on top of another one (``NAME:BASE`` specs such as ``biascal:mse``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.registry import CalibrationMethod, get_calibration


class OnTopOf(CalibrationMethod):
    """BASE's ANN preparation, thresholds and SNN correction, then :meth:`correct_on_top`."""

    default_base: ClassVar[str] = "percentile:99.99"

    def __init__(self, arg: str | None = None) -> None:
        self.base = get_calibration(arg or self.default_base)

    def base_loader(self, loader: DataLoader | None):
        """The calibration batches BASE sees (default: all of them)."""
        return loader

    def prepare_ann(
        self, ann: fx.GraphModule, loader: DataLoader | None, device: torch.device
    ) -> fx.GraphModule:
        return self.base.prepare_ann(ann, self.base_loader(loader), device)

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        return self.base.thresholds(ann, activations, self.base_loader(loader), device)

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        self.base.correct_snn(snn, self.base_loader(loader), device)
        self.correct_on_top(snn, loader, device)

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        """This method's own correction of the SNN that BASE produced."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.name}:{self.base}"
