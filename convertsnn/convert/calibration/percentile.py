"""Percentile calibration: threshold = the p-th percentile of positive activations.

Rueckauer et al. 2017 ("Conversion of continuous-valued deep networks to efficient event-driven
networks"); like their SNN toolbox, the percentile is over the non-zero activations.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from convertsnn.convert.calibration.observers import ActivationObserver, ActivationStatistic
from convertsnn.convert.calibration.registry import parse_options, register_calibration
from convertsnn.errors import ConvertSNNError


@register_calibration
class Percentile(ActivationStatistic):
    """``percentile[:P]``: threshold = P-th percentile of each layer's positive activations."""

    name = "percentile"
    default_p: ClassVar[float] = 99.99

    def __init__(self, arg: str | None = None) -> None:
        self.p = parse_options(self.name, arg, {"p": self.default_p})["p"]
        if not 0 < self.p <= 100:
            raise ConvertSNNError(f"percentile must be in (0, 100], got {self.p}")

    def statistic(self, observer: ActivationObserver) -> torch.Tensor:
        return observer.percentile(self.p)

    def __str__(self) -> str:
        return f"{self.name}:{self.p:g}"
