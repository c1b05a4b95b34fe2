"""T-aware thresholds: per layer, the threshold that best reproduces the ANN activations with the
T-level output an IF neuron can give.

Li et al., ICML 2021 ("A free lunch from ANN: towards efficient, accurate spiking neural networks
calibration", section 4.1): in T steps an IF neuron with threshold ``theta`` (reset by
subtraction, membrane starting at ``v_init * theta``) outputs, for a constant input ``a``,

    q(a) = theta / T * clamp(floor(a T / theta + v_init), 0, T)

A large threshold wastes resolution (steps of ``theta / T``), a small one clips; the best
trade-off depends on T. For each layer, the threshold is searched on a grid of fractions of the
layer's maximum activation to minimise ``mean((q(a) - relu(a))^2)`` over a sample of the
layer's positive activations. The search needs T, so it runs on the converted SNN (for its
``timesteps``), from the samples taken during calibration. For burst neurons (up to K spikes per
step, :class:`~convertsnn.snn.neurons.IFNeuron`) the output is clamped at ``K T`` spikes instead
of T, so the search finds the finer threshold they can afford; a population of K member
neurons (``IFNeuron(population=K)``) rounds to ``K T`` levels over the same range, so the search
runs for ``K T`` steps.

``scale`` multiplies every chosen threshold: the MSE optimum is the best clean fit of one layer,
not the most robust network. On the PGD-trained ResNet-2B at T = 8 (standard suite at 2/255,
first 500 test images; docs/robustness_loss.md) ``scale=0.7`` gave 66.0 / 27.8 % clean / robust
against 63.2 / 21.2 % for the default conversion (seed 001's ``layerwise`` calibration scales its
thresholds by 0.3 for the same reason).

``channel=1`` runs the search for every channel on its own (each on a grid of fractions of the
channel's max, on its values at about ``CHANNEL_SAMPLES`` random positions), so each channel
gets the resolution its own range needs, as channel-wise normalisation (Kim et al. 2020,
"Spiking-YOLO"; :mod:`~convertsnn.convert.calibration.channelwise`) does for percentiles;
channels that never fired get the layer's threshold. On the CIFAR ResNets of issue 17 it
lifted ``delay:biascal:mse:scale=0.7`` on ResNet-20 from 64.3 / 79.8 to 67.4 / 83.6 % at T = 4 / 8
(docs/conversion.md).

Spec: ``mse[:grid=100,scale=1,channel=0]``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.max_norm import MaxNorm
from convertsnn.convert.calibration.registry import parse_options, register_calibration
from convertsnn.errors import ConvertSNNError


def if_output(
    values: torch.Tensor, theta: float | torch.Tensor, timesteps: int, v_init: float, burst: int
) -> torch.Tensor:
    """``q(a)`` above: the T-step output of an IF neuron with threshold ``theta`` for constant
    inputs ``values`` (``burst * T`` levels for burst neurons)."""
    return torch.floor(values * timesteps / theta + v_init).clamp(0, burst * timesteps) * (
        theta / timesteps
    )


def best_threshold(
    values: torch.Tensor, top: float, timesteps: int, v_init: float, grid: int, burst: int = 1
) -> float:
    """The threshold in ``top * (1..grid)/grid`` whose T-level output (``burst * T`` levels for
    burst neurons; a population of K members is passed as ``timesteps = K * T``) is closest
    (MSE) to ``values`` (positive activations)."""
    best, best_error = top, float("inf")
    for i in range(1, grid + 1):
        theta = top * i / grid
        error = (if_output(values, theta, timesteps, v_init, burst) - values).pow(2).mean().item()
        if error < best_error:
            best, best_error = theta, error
    return best


def best_channel_thresholds(
    values: torch.Tensor,
    tops: torch.Tensor,
    timesteps: int,
    v_init: float,
    grid: int,
    burst: int = 1,
) -> torch.Tensor:
    """:func:`best_threshold` for every channel at once: ``values`` ``[C, n]`` (activations at
    the same n positions of every channel, zeros included: they round to 0 at any threshold),
    ``tops`` ``[C]`` the channels' largest activations; the thresholds ``[C]``."""
    best = tops.clone()
    best_error = torch.full_like(tops, float("inf"))
    for i in range(1, grid + 1):
        theta = (tops * i / grid).clamp(min=1e-12).unsqueeze(1)
        error = (if_output(values, theta, timesteps, v_init, burst) - values).pow(2).mean(1)
        better = error < best_error
        best = torch.where(better, theta.squeeze(1), best)
        best_error = torch.where(better, error, best_error)
    return best


CHANNEL_SAMPLES = 8192  # about this many positions per channel (every batch's) in its search


@register_calibration
class MSEThreshold(MaxNorm):
    """``mse[:grid=100,scale=1,channel=0]``: per layer (per channel with ``channel=1``), the
    threshold minimising the T-step output error.

    :meth:`thresholds` gives the layer maxima (:class:`MaxNorm`); :meth:`correct_snn` searches
    below them for the SNN's T.
    """

    name = "mse"
    depends_on_timesteps = True

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, {"grid": 100, "scale": 1.0, "channel": 0})
        self.grid, self.scale = options["grid"], options["scale"]
        self.per_channel = options["channel"] == 1
        if self.grid < 1 or not self.scale > 0 or options["channel"] not in (0, 1):
            raise ConvertSNNError(f"mse needs grid >= 1, scale > 0 and channel 0 or 1, got '{arg}'")
        self.observers = {}

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        for name, module in snn.body.named_modules():
            if name not in self.observers:
                continue
            obs = self.observers[name]
            if self.per_channel:
                module.threshold.data = self.scale * self.channel_thresholds(
                    obs, snn.timesteps * module.population, module
                )
                continue
            values = torch.cat(obs.samples)
            theta = best_threshold(
                values,
                obs.max.item(),
                snn.timesteps * module.population,
                module.v_init,
                self.grid,
                module.burst,
            )
            module.threshold.data = torch.full_like(module.threshold.data, theta * self.scale)

    def channel_thresholds(self, obs, timesteps: int, module) -> torch.Tensor:
        """Per channel, the threshold of :func:`best_channel_thresholds`; channels that never
        fired on the calibration data get the layer's."""
        settings = (timesteps, module.v_init, self.grid, module.burst)
        values = torch.cat(obs.channel_samples, dim=1).clamp(min=0)
        if values.shape[1] > CHANNEL_SAMPLES:  # at random: a stride aliases with the layout
            generator = torch.Generator().manual_seed(0)
            values = values[
                :, torch.randperm(values.shape[1], generator=generator)[:CHANNEL_SAMPLES]
            ]
        tops = obs.channel_max.cpu().float()
        theta = best_channel_thresholds(values, tops, *settings)
        if (tops <= 0).any():
            layer = best_threshold(torch.cat(obs.samples), obs.max.item(), *settings)
            theta = torch.where(tops > 0, theta, torch.full_like(theta, layer))
        return theta.to(module.threshold)

    def __str__(self) -> str:
        return (
            f"mse:grid={self.grid}"
            + (f",scale={self.scale:g}" if self.scale != 1 else "")
            + (",channel=1" if self.per_channel else "")
        )
