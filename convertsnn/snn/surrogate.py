"""Surrogate gradients for the spike (Heaviside) function.

The forward pass is always the hard step ``H(x) = 1 if x >= 0 else 0`` with ``x = u - theta``
(membrane minus threshold). The backward pass replaces ``dH/dx`` by a smooth or piecewise
surrogate. Surrogates stay active in eval mode, so white-box attacks always get real gradients.

Families and their parameter ``g`` (the names and formulas of the triangle, rect, exp, expd and
ste families follow seed 001, Oezdenizci & Legenstein, TMLR 2024, github
IGITUGraz/RobustSNNConversion; sigmoid and atan follow SpikingJelly):

========  =======================================  ==========================  =========
family    dH/dx                                    g means                     default g
========  =======================================  ==========================  =========
triangle  max(0, g - |x|) / g^2   (seed "PCW")     width (support [-g, g])     1.0
rect      1/g  where |x| < g/2                     width                       1.0
exp       exp(-g |x|)                              sharpness                   1.0
expd      0.3 exp(-g |x|)   (seed "EXP-D")         sharpness                   1.0
sigmoid   g s(gx) (1 - s(gx)),  s = logistic       sharpness                   4.0
atan      (g/2) / (1 + (pi/2 g x)^2)               sharpness                   2.0
ste       1   (straight-through)                   (none)                      -
========  =======================================  ==========================  =========

A surrogate is written as a spec string ``"family:g"`` (e.g. ``"triangle:0.5"``) or just
``"family"`` for the default ``g``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from convertsnn.errors import ConvertSNNError

_DERIVATIVES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "triangle": lambda x, g: (g - x.abs()).clamp(min=0) / (g * g),
    "rect": lambda x, g: (x.abs() < g / 2).to(x.dtype) / g,
    "exp": lambda x, g: torch.exp(-g * x.abs()),
    "expd": lambda x, g: 0.3 * torch.exp(-g * x.abs()),
    "sigmoid": lambda x, g: g * torch.sigmoid(g * x) * (1 - torch.sigmoid(g * x)),
    "atan": lambda x, g: (g / 2) / (1 + (math.pi / 2 * g * x) ** 2),
    "ste": lambda x, g: torch.ones_like(x),
}

_DEFAULT_PARAM = {
    "triangle": 1.0,
    "rect": 1.0,
    "exp": 1.0,
    "expd": 1.0,
    "sigmoid": 4.0,
    "atan": 2.0,
    "ste": 1.0,
}

SURROGATE_FAMILIES: tuple[str, ...] = tuple(_DERIVATIVES)


@dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative: ``family`` (see the module table) and its parameter ``g``."""

    family: str = "triangle"
    g: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in _DERIVATIVES:
            raise ConvertSNNError(
                f"unknown surrogate '{self.family}'; choose one of {', '.join(SURROGATE_FAMILIES)}"
            )
        if not (self.g > 0 and math.isfinite(self.g)):
            raise ConvertSNNError(f"surrogate parameter must be a positive number, got {self.g}")

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate of ``dH/dx`` at ``x = u - theta``, same shape as ``x``."""
        return surrogate_derivative(self.family, x, self.g)

    def spike(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside step of ``x`` with this surrogate in the backward pass."""
        return _SpikeFunction.apply(x, self)

    def __str__(self) -> str:
        return self.family if self.family == "ste" else f"{self.family}:{self.g:g}"


def surrogate_derivative(family: str, x: torch.Tensor, g: float | torch.Tensor) -> torch.Tensor:
    """``dH/dx`` of ``family`` at ``x``; ``g`` may be a tensor broadcastable to ``x`` (one
    parameter per neuron and step, as the adaptive surrogate of :mod:`convertsnn.attacks` uses)."""
    return _DERIVATIVES[family](x, g)


def parse_surrogate(spec: str | Surrogate) -> Surrogate:
    """Parse ``"family[:g]"`` into a :class:`Surrogate`; a Surrogate is returned unchanged."""
    if isinstance(spec, Surrogate):
        return spec
    family, _, param = str(spec).strip().lower().partition(":")
    if family not in _DERIVATIVES:
        raise ConvertSNNError(
            f"unknown surrogate '{spec}'; use FAMILY[:G] with FAMILY one of "
            f"{', '.join(SURROGATE_FAMILIES)}"
        )
    if not param:
        return Surrogate(family, _DEFAULT_PARAM[family])
    try:
        g = float(param)
    except ValueError:
        raise ConvertSNNError(
            f"surrogate parameter in '{spec}' is not a number; write e.g. '{family}:0.5'"
        ) from None
    return Surrogate(family, g)


class _SpikeFunction(torch.autograd.Function):
    """Heaviside forward, surrogate backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None
