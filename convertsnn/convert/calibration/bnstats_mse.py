"""Data-free, T-aware thresholds: the ``mse`` threshold search on BatchNorm statistics.

``bnstats`` models each activation's input as a Gaussian per channel, from the BatchNorm
statistics propagated through the graph (see :mod:`convertsnn.convert.calibration.bnstats`),
and takes ``max_c (mean_c + K std_c)``: a high percentile, whose coarse steps of ``theta / T``
lose small activations at low T. This method draws samples from the same per-channel Gaussians
(equal weight per channel), rectifies them, and picks the threshold whose T-step IF output is
closest (mean squared error) to them, the threshold search of Li et al., ICML 2021 ("A free
lunch from ANN: towards efficient, accurate spiking neural networks calibration", section 4.1;
:func:`convertsnn.convert.calibration.mse.best_threshold`), run for the converted SNN's T. No
data is read.

Spec: ``bnmse[:K=3,samples=20000,grid=100]`` (K only bounds the search from above).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.bnstats import BNStats
from convertsnn.convert.calibration.mse import best_threshold
from convertsnn.convert.calibration.registry import parse_options, register_calibration
from convertsnn.errors import ConvertSNNError


@register_calibration
class BNStatsMSE(BNStats):
    """``bnmse[:K=3,samples=20000,grid=100]``: data-free thresholds searched for the SNN's T."""

    name = "bnmse"
    depends_on_timesteps = True

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, {"K": 3.0, "samples": 20000, "grid": 100})
        self.k, self.samples, self.grid = options["K"], options["samples"], options["grid"]
        if not self.k > 0 or self.samples < 1 or self.grid < 1:
            raise ConvertSNNError(f"bnmse needs K > 0, samples >= 1 and grid >= 1, got '{arg}'")

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        for name, neuron in snn.body.named_modules():
            if name not in self.inputs:
                continue
            m = self.inputs[name]
            per_channel = -(-self.samples // len(m.mean))
            noise = torch.randn(len(m.mean), per_channel, generator=generator)
            values = (m.mean[:, None] + m.var.sqrt()[:, None] * noise).flatten()
            values = values[values > 0]
            top = neuron.threshold.detach().max().item()
            if values.numel():
                levels = snn.timesteps * neuron.population
                settings = (levels, neuron.v_init, self.grid, neuron.burst)
                theta = best_threshold(values, top, *settings)
                neuron.threshold.data = torch.full_like(neuron.threshold.data, theta)

    def __str__(self) -> str:
        return f"bnmse:K={self.k:g},samples={self.samples},grid={self.grid}"
