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

Scale. By default the surrogate is evaluated on the threshold-normalised membrane
``x / theta = (u - theta) / theta``: ``dS/du = f'(x / theta) / theta`` (theta detached in the
divisor), so a width ``g`` is relative to each neuron's (or channel's) threshold and the
gradients do not change when a layer's weights and threshold are scaled by the same factor
(calibrated thresholds range from below 1 to over 30 within one model). The absolute form
``f'(u - theta)`` is kept as an explicit option (``abs``). ``detach`` excludes the reset term
from the graph (the spike in ``u - s theta`` is treated as a constant in the backward pass, as
SpikingJelly's ``detach_reset``).

A surrogate is written as a spec string ``"family[:g][:abs][:detach]"`` (e.g.
``"triangle:0.5"``, ``"sigmoid:20:detach"``, ``"triangle:1:abs"``) or just ``"family"`` for the
default ``g``, threshold-relative, with the reset in the graph. Files written before the scale
existed store ``"family:g"``, which now reads as threshold-relative.
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


OPTIONS = ("abs", "detach")


@dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative: ``family`` (see the module table), its parameter ``g``, whether
    it acts on ``u - theta`` as it is (``absolute``; default: on ``(u - theta) / theta``) and
    whether the reset is excluded from the graph (``detach_reset``)."""

    family: str = "triangle"
    g: float = 1.0
    absolute: bool = False
    detach_reset: bool = False

    def __post_init__(self) -> None:
        if self.family not in _DERIVATIVES:
            raise ConvertSNNError(
                f"unknown surrogate '{self.family}'; choose one of {', '.join(SURROGATE_FAMILIES)}"
            )
        if not (self.g > 0 and math.isfinite(self.g)):
            raise ConvertSNNError(f"surrogate parameter must be a positive number, got {self.g}")

    def derivative(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """The surrogate of ``dS/du`` at ``x = u - theta``, same shape as ``x``; ``theta``
        (broadcastable to ``x``) is needed unless the surrogate is absolute."""
        if self.absolute:
            return surrogate_derivative(self.family, x, self.g)
        if theta is None:
            raise ConvertSNNError(f"the threshold-relative surrogate {self} needs the threshold")
        theta = theta.detach()
        return surrogate_derivative(self.family, x / theta, self.g) / theta

    def spike(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Heaviside step of ``x = u - theta`` with this surrogate in the backward pass."""
        return _SpikeFunction.apply(x, theta, self)

    def __str__(self) -> str:
        text = self.family if self.family == "ste" else f"{self.family}:{self.g:g}"
        return text + (":abs" if self.absolute else "") + (":detach" if self.detach_reset else "")


def surrogate_derivative(family: str, x: torch.Tensor, g: float | torch.Tensor) -> torch.Tensor:
    """``dH/dx`` of ``family`` at ``x``; ``g`` may be a tensor broadcastable to ``x`` (one
    parameter per neuron and step, as the adaptive surrogate of :mod:`convertsnn.attacks` uses)."""
    return _DERIVATIVES[family](x, g)


def parse_surrogate(spec: str | Surrogate) -> Surrogate:
    """Parse ``"family[:g][:abs][:detach]"`` into a :class:`Surrogate`; a Surrogate is
    returned unchanged."""
    if isinstance(spec, Surrogate):
        return spec
    family, *parts = str(spec).strip().lower().split(":")
    if family not in _DERIVATIVES:
        raise ConvertSNNError(
            f"unknown surrogate '{spec}'; use FAMILY[:G][:abs][:detach] with FAMILY one of "
            f"{', '.join(SURROGATE_FAMILIES)}"
        )
    options = [p for p in parts if p in OPTIONS]
    params = [p for p in parts if p not in OPTIONS]
    if len(params) > 1 or len(set(options)) != len(options) or parts[: len(params)] != params:
        raise ConvertSNNError(
            f"cannot read the surrogate '{spec}'; write FAMILY[:G][:abs][:detach], "
            f"e.g. '{family}:0.5:detach'"
        )
    g = _DEFAULT_PARAM[family]
    if params:
        try:
            g = float(params[0])
        except ValueError:
            raise ConvertSNNError(
                f"surrogate parameter in '{spec}' is not a number; write e.g. '{family}:0.5'"
            ) from None
    return Surrogate(family, g, "abs" in options, "detach" in options)


class _SpikeFunction(torch.autograd.Function):
    """Heaviside forward, surrogate backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, theta, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, theta)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        x, theta = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x, theta), None, None
