"""Delayed evaluation: read the SNN's output only after the first spikes have crossed the network
(Bu, Li and Yu, CVPR 2025, "Inference-scale complexity in ANN-SNN conversion for
high-performance and low-power applications").

A converted network needs a few steps before its deep layers receive any spikes: every layer
waits for its membrane to charge from its inputs' first spikes. The logits of those first
steps carry little of the input and drag the time average away from the ANN's. The delayed
readout ``delay:D`` averages the logits of steps ``D..T-1`` only (a setting of the SNN file,
:class:`~convertsnn.snn.network.SpikingNetwork`'s ``readout``).

The paper sums an estimate of each layer's delay; here D is chosen for the model's T on
calibration images instead: the BASE method's SNN runs once on ``images`` (256) calibration
images, and D in ``0..T-1`` is the delay whose readout gives the ANN's class on most of them
(ties to the smaller D; D = 0 is the plain mean). The agreement for every D is recorded in the
file's metadata (``readout_delay``).

Spec: ``delay`` (on top of ``ltb``, the paper's thresholds) or ``delay:BASE`` with any other
method, e.g. ``delay:biascal:mse``.
"""

from __future__ import annotations

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.convert.calibration.sequential import calibration_images


def window_means(sequence: torch.Tensor) -> torch.Tensor:
    """Every delayed readout of ``sequence`` ``[T, ...]`` at once: entry D is its mean over steps
    ``D..T-1`` (reversed cumulative sums)."""
    tails = sequence.flip(0).cumsum(0).flip(0)
    steps = torch.arange(len(sequence), 0, -1, device=sequence.device, dtype=tails.dtype)
    return tails / steps.view(-1, *[1] * (sequence.dim() - 1))


@register_calibration
class DelayedReadout(OnTopOf):
    """``delay[:BASE]``: BASE's SNN, read out from the step D that agrees most with the ANN."""

    name = "delay"
    default_base = "ltb"
    depends_on_timesteps = True
    images = 256
    batch = 64

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """BASE's thresholds; first records the ANN's classes on the calibration images."""
        self.sample = calibration_images(loader, self.images)
        with torch.no_grad():
            ann.eval().to(device)
            self.ann_classes = torch.cat(
                [ann(b.to(device)).argmax(1) for b in self.sample.split(self.batch)]
            )
        return self.base.thresholds(ann, activations, loader, device)

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        snn.eval().to(device)
        with torch.no_grad():
            sequence = torch.cat(
                [snn.forward_sequence(b.to(device)) for b in self.sample.split(self.batch)], dim=1
            )
        classes = window_means(sequence).argmax(2)  # [T, N, ...]: the class axis of [N, K, ...]
        agreement = (classes == self.ann_classes.to(classes.device)).flatten(1).float().mean(1)
        delay = int(agreement.argmax())  # the first of the best: ties go to the smaller D
        snn.readout = f"delay:{delay}" if delay else "mean"
        snn.metadata["readout_delay"] = {
            "chosen": delay,
            "timesteps": snn.timesteps,
            "images": len(self.sample),
            "agreement_with_ann": {str(d): round(a, 4) for d, a in enumerate(agreement.tolist())},
        }
