"""Max-norm calibration: threshold = the largest activation seen (Diehl et al. 2015)."""

from __future__ import annotations

import torch

from convertsnn.convert.calibration.observers import ActivationObserver, ActivationStatistic
from convertsnn.convert.calibration.registry import register_calibration


@register_calibration
class MaxNorm(ActivationStatistic):
    """``max``: each layer's threshold is its maximum activation on the calibration data."""

    name = "max"

    def statistic(self, observer: ActivationObserver) -> torch.Tensor:
        return observer.max.cpu()
