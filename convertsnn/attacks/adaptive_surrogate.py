"""Adaptive-sharpness surrogate gradient (ASSG; Wang et al. 2025, arXiv 2512.22522).

A fixed surrogate gives (near) zero gradient to every neuron whose membrane potential sits far
from the threshold, so white-box attacks stall and the SNN looks robust. ASSG sets the surrogate's
sharpness per neuron, per time step and per sample from running statistics of the distance to the
threshold, ``x = u - theta``, gathered over the attack's iterations::

    M <- b1 * M + (1 - b1) * |x|              (first call: M = |x|)
    D <- b2 * D + (1 - b2) * ||x| - M|        (first call: D = 0)
    s  = (M + relax * D) / a                  (support half-width; sharpness = 1 / s)

so the surrogate's support always reaches the neurons' typical distance to the threshold. ``a``
(the paper's bound on the expected gradient-vanishing degree; 0.8 there) is the one coefficient;
:mod:`convertsnn.eval.suites` tunes it per model on a small batch, as the paper recommends.
``s`` becomes the parameter ``g`` of a surrogate family of :mod:`convertsnn.snn.surrogate`:
``g = s`` (triangle), ``2 s`` (rect, whose ``g`` is the full width) or ``1 / s`` (the sharpness
families exp, expd, sigmoid, atan).

Differences from the paper's code: the first call initialises ``M`` with the observed ``|x|``
instead of 1 (our thresholds are calibrated, not 1), and every gradient pass updates the
statistics, EOT draws included.
"""

from __future__ import annotations

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.surrogate import SURROGATE_FAMILIES, surrogate_derivative

WIDTH_FAMILIES = {"triangle": 1.0, "rect": 2.0}  # g = factor * s; other families: g = 1 / s
ADAPTIVE_FAMILIES = tuple(f for f in SURROGATE_FAMILIES if f != "ste")


def check_adaptive(family: str, coefficient: float) -> None:
    """Raise a one-line error for a family without a parameter or a non-positive coefficient."""
    if family not in ADAPTIVE_FAMILIES:
        raise ConvertSNNError(
            f"the adaptive surrogate needs one of {', '.join(ADAPTIVE_FAMILIES)}, got '{family}'"
        )
    if not coefficient > 0:
        raise ConvertSNNError(f"adaptive surrogate coefficient must be > 0, got {coefficient}")


class AdaptiveSurrogate:
    """One neuron layer's adaptive surrogate; call :meth:`spike` once per time step, in order.

    Args:
        neuron: the neuron it serves (its ``timesteps`` tells which step a call belongs to).
        family: surrogate family (any but ``ste``).
        coefficient: ``a`` above; larger is sharper.
        relax, beta1, beta2: the paper's defaults 1.5, 0.9, 0.9.
        detach_reset: exclude the reset term from the graph (see :mod:`convertsnn.snn.neurons`).
    """

    def __init__(
        self,
        neuron: IFNeuron,
        family: str = "triangle",
        coefficient: float = 0.8,
        relax: float = 1.5,
        beta1: float = 0.9,
        beta2: float = 0.9,
        detach_reset: bool = False,
    ) -> None:
        check_adaptive(family, coefficient)
        self.detach_reset = detach_reset
        self.neuron = neuron
        self.family = family
        self.coefficient = float(coefficient)
        self.relax, self.beta1, self.beta2 = relax, beta1, beta2
        self.first: list[torch.Tensor | None] = []
        self.second: list[torch.Tensor | None] = []
        self.step = 0

    def spike(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Heaviside step of ``x = u - theta`` with the adaptive surrogate in the backward pass
        (``theta`` is not needed: the width follows ``|x|``, so it scales with the layer)."""
        steps = self.neuron.timesteps
        if len(self.first) != steps:
            self.first, self.second, self.step = [None] * steps, [None] * steps, 0
        t = self.step
        self.step = (self.step + 1) % steps
        if torch.is_grad_enabled():
            self._update(t, x.detach().abs())
        first, second = self.first[t], self.second[t]
        if first is None or first.shape != x.shape:
            first, second = x.detach().abs(), torch.zeros_like(x)
        with torch.no_grad():
            scale = torch.add(first, second, alpha=self.relax).div_(self.coefficient)
            scale.clamp_(min=1e-6)
            factor = WIDTH_FAMILIES.get(self.family)
            g = scale.mul_(factor) if factor is not None else scale.reciprocal_()
        return _AdaptiveSpike.apply(x, g, self.family)

    def _update(self, t: int, distance: torch.Tensor) -> None:
        first, second = self.first[t], self.second[t]
        if first is None or first.shape != distance.shape:  # new batch: start afresh
            self.first[t], self.second[t] = distance, torch.zeros_like(distance)
            return
        with torch.no_grad():
            first.mul_(self.beta1).add_(distance, alpha=1 - self.beta1)
            second.mul_(self.beta2).add_(distance.sub_(first).abs_(), alpha=1 - self.beta2)

    def __str__(self) -> str:
        detach = ":detach" if self.detach_reset else ""
        return f"adaptive:{self.family}:{self.coefficient:g}{detach}"


class _AdaptiveSpike(torch.autograd.Function):
    """Heaviside forward; the family's derivative with a per-element parameter backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor, family: str) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, g)
        ctx.family = family
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        x, g = ctx.saved_tensors
        return grad_output * surrogate_derivative(ctx.family, x, g), None, None
