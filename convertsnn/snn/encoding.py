"""Input encoders: turn an image batch ``[B, C, H, W]`` in [0, 1] into ``[T, B, C, H, W]``.

- ``direct``: the analog image at every step (direct coding; deterministic).
- ``poisson``: Bernoulli spikes with probability = pixel intensity, drawn anew each step
  (rate coding); straight-through gradient so attacks still get input gradients.
- ``gaussian:SIGMA``: the image plus Gaussian noise of std SIGMA, drawn anew each step
  (randomised smoothing coding, seed 002: Wu et al., ACM MM 2024).

Stochastic encoders set ``stochastic = True``: evaluations of such models must use EOT.
Encoders run in pixel space, before the model's own normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from convertsnn.errors import ConvertSNNError


class Encoder:
    """Base class: ``encoder(x, timesteps) -> [T, B, ...]``."""

    name = "direct"
    stochastic = False

    def __call__(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        return x.unsqueeze(0).expand(timesteps, *x.shape)

    def __str__(self) -> str:
        return self.name


class DirectEncoder(Encoder):
    """The same analog image at every step."""


class PoissonEncoder(Encoder):
    """Bernoulli(x) spikes per step; gradient passes straight through to x."""

    name = "poisson"
    stochastic = True

    def __call__(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        seq = x.unsqueeze(0).expand(timesteps, *x.shape)
        return seq + (torch.bernoulli(seq.detach()) - seq).detach()


class GaussianEncoder(Encoder):
    """x + N(0, sigma^2) per step."""

    stochastic = True

    def __init__(self, sigma: float) -> None:
        if not sigma > 0:
            raise ConvertSNNError(f"gaussian encoder needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"gaussian:{self.sigma:g}"

    def __call__(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        seq = x.unsqueeze(0).expand(timesteps, *x.shape)
        return seq + self.sigma * torch.randn_like(seq)


def parse_encoder(spec: str | Encoder) -> Encoder:
    """``"direct"``, ``"poisson"`` or ``"gaussian:SIGMA"`` to an encoder."""
    if isinstance(spec, Encoder):
        return spec
    name, _, param = str(spec).strip().lower().partition(":")
    if name == "direct" and not param:
        return DirectEncoder()
    if name == "poisson" and not param:
        return PoissonEncoder()
    if name == "gaussian":
        try:
            return GaussianEncoder(float(param))
        except ValueError:
            pass
    raise ConvertSNNError(
        f"unknown encoder '{spec}'; use 'direct', 'poisson' or 'gaussian:SIGMA' (e.g. gaussian:0.1)"
    )


@contextmanager
def same_noise_next(device: str | torch.device) -> Iterator[None]:
    """Random draws inside the block are made again by the next draws: the random generators
    (CPU and ``device``) are restored on exit. Two forward passes of a stochastic encoder, the
    first inside the block, then see the same noise (common random numbers)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
