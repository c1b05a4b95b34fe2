"""Local threshold balancing with channel-wise thresholds (Bu, Li and Yu, CVPR 2025,
"Inference-scale complexity in ANN-SNN conversion for high-performance and low-power
applications"; code: github.com/putshua/Inference-scale-ANN-SNN).

Each activation gets one threshold per channel, found by gradient descent on its own (local)
clipping error ``E[(a - theta)^2 ; a > theta]``, the part of the conversion error that a
threshold below the activations causes. Every threshold starts at 0; on each calibration batch
the ANN runs once with every ReLU replaced by ``clamp(a, 0, theta)``, and each layer, in the
same forward pass, takes one step

    theta_c <- theta_c + 2 * scale * mean((a - theta_c) * [a > theta_c])

(the mean over the batch and the positions of channel ``c``), with the earlier layers already
clipped by their updated thresholds. The number of steps is what keeps the thresholds below the
maxima: run to convergence the step would reach each channel's largest activation. The
authors' demo takes 12 steps (batches of 100 ImageNet images); on the CIFAR ResNets here 12
steps leave most thresholds at a fraction of the activations (ResNet-20's ANN clipped at them:
13.5 % instead of 91 %, SNN 8 %), so the default is 200 steps (clipped ANN near the ANN; see
docs/conversion.md). The whole method costs ``iterations`` ANN forward passes
("inference-scale"); it ignores T. Channels that never activated get the layer's largest
threshold.

Spec: ``ltb[:iterations=200,scale=1]`` (the authors' setting: ``ltb:iterations=12``). The
calibration batches are cycled when there are fewer than ``iterations`` of them. Delayed evaluation, the paper's other half, is the readout setting
chosen by ``delay:BASE`` (:mod:`convertsnn.convert.calibration.delayed_readout`), e.g.
``delay:ltb``; ``biascal:ltb`` adds bias calibration for T.
"""

from __future__ import annotations

import itertools

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.bias_correction import channel_mean
from convertsnn.convert.calibration.observers import run_ann
from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    parse_options,
    register_calibration,
)
from convertsnn.errors import ConvertSNNError


def per_channel(theta: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[C]`` thresholds shaped to broadcast over dimension 1 of an ``ndim`` tensor."""
    return theta.view(-1, *([1] * (ndim - 2)))


@register_calibration
class LocalThresholdBalancing(CalibrationMethod):
    """``ltb[:iterations=200,scale=1]``: per-channel thresholds by local clipping-error descent."""

    name = "ltb"

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, {"iterations": 200, "scale": 1.0})
        self.iterations, self.scale = options["iterations"], options["scale"]
        if self.iterations < 1 or self.scale <= 0:
            raise ConvertSNNError(
                f"ltb needs iterations >= 1 and scale > 0, got {self.iterations} and {self.scale}"
            )

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        if loader is None:
            raise ConvertSNNError("ltb needs data: pass calibration images (--calib)")
        thetas: dict[str, torch.Tensor] = {}

        def balance(name: str, out: torch.Tensor) -> torch.Tensor:
            theta = thetas.get(name)
            if theta is None:
                theta = out.new_zeros(out.shape[1])
            excess = (out - per_channel(theta, out.dim())).clamp(min=0)
            thetas[name] = theta = theta + 2 * self.scale * channel_mean(excess)
            return torch.minimum(out, per_channel(theta, out.dim()))

        hooks = [
            ann.get_submodule(name).register_forward_hook(
                lambda _m, _i, out, name=name: balance(name, out)
            )
            for name in activations
        ]
        batches = itertools.islice(itertools.cycle(loader), self.iterations)
        try:
            run_ann(ann, batches, device, "ltb", total=self.iterations)
        finally:
            for hook in hooks:
                hook.remove()
        if not thetas:
            raise ConvertSNNError("the calibration data is empty; pass at least one image")
        return {name: never_active_to_layer_max(theta).cpu() for name, theta in thetas.items()}

    def __str__(self) -> str:
        return f"ltb:iterations={self.iterations},scale={self.scale:g}"


def never_active_to_layer_max(theta: torch.Tensor) -> torch.Tensor:
    """Channels left at 0 (never active on the calibration data) get the layer's largest."""
    return torch.where(theta > 0, theta, theta.max())
