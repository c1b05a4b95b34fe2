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

Spec: ``mse[:grid=100,scale=1]``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.max_norm import MaxNorm
from convertsnn.convert.calibration.registry import parse_options, register_calibration
from convertsnn.errors import ConvertSNNError


def best_threshold(
    values: torch.Tensor, top: float, timesteps: int, v_init: float, grid: int, burst: int = 1
) -> float:
    """The threshold in ``top * (1..grid)/grid`` whose T-level output (``burst * T`` levels for
    burst neurons; a population of K members is passed as ``timesteps = K * T``) is closest
    (MSE) to ``values`` (positive activations)."""
    best, best_error = top, float("inf")
    for i in range(1, grid + 1):
        theta = top * i / grid
        q = torch.floor(values * timesteps / theta + v_init).clamp(0, burst * timesteps) * (
            theta / timesteps
        )
        error = (q - values).pow(2).mean().item()
        if error < best_error:
            best, best_error = theta, error
    return best


@register_calibration
class MSEThreshold(MaxNorm):
    """``mse[:grid=100]``: per layer, the threshold minimising the T-step output error.

    :meth:`thresholds` gives the layer maxima (:class:`MaxNorm`); :meth:`correct_snn` searches
    below them for the SNN's T.
    """

    name = "mse"
    depends_on_timesteps = True

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, {"grid": 100, "scale": 1.0})
        self.grid, self.scale = options["grid"], options["scale"]
        if self.grid < 1 or not self.scale > 0:
            raise ConvertSNNError(f"mse needs grid >= 1 and scale > 0, got '{arg}'")
        self.observers = {}

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        for name, module in snn.body.named_modules():
            if name not in self.observers:
                continue
            obs = self.observers[name]
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

    def __str__(self) -> str:
        return f"mse:grid={self.grid}" + (f",scale={self.scale:g}" if self.scale != 1 else "")
