"""How a white-box attack gets input gradients from an SNN (the attack's *gradient mode*).

A mode is written as a spec string:

=====================================  =====================================================
spec                                   gradients
=====================================  =====================================================
``native``                             whatever the model is set to (the default; any
                                       nn.Module): the surrogate it was converted or
                                       finetuned with
``bptt:FAMILY[:G][:abs][:detach]``     BPTT with a surrogate of :mod:`convertsnn.snn.surrogate`
                                       on the threshold-normalised membrane
                                       ``(u - theta) / theta`` (``abs``: on ``u - theta``;
                                       ``detach``: reset excluded from the graph), e.g.
                                       ``bptt:triangle:0.5``, ``bptt:sigmoid:20:detach``,
                                       ``bptt:ste``
``bptr``                               backprop through the firing rate (seed 001's ``RateBp``)
``ann``                                the source-ANN proxy: same weights, ReLU, one step
``adaptive[:FAMILY[:A]][:detach]``     adaptive-sharpness surrogate (Wang et al. 2025, see
                                       :mod:`convertsnn.attacks.adaptive_surrogate`); default
                                       ``adaptive:triangle:0.8``
=====================================  =====================================================

Only the backward pass changes, so the logits of a gradient pass are the SNN's own, except in
``ann`` mode: there attacks take the proxy's gradient but judge loss and success on the SNN
(one extra forward pass per step). Seed 001 (Oezdenizci & Legenstein, TMLR 2024) evaluates each
attack in 19 variants: :data:`SEED001_MODES` (its thresholds are of order one, so its widths
read as threshold-relative here); seed 000's surrogates are :data:`SEED000_MODES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from convertsnn.attacks.adaptive_surrogate import AdaptiveSurrogate, check_adaptive
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.surrogate import parse_surrogate

KINDS = ("native", "bptt", "bptr", "ann", "adaptive")

SEED001_SURROGATES = (
    *(f"triangle:{g}" for g in ("0.25", "0.5", "1", "2", "3")),  # "PCW"
    *(f"expd:{g}" for g in ("0.5", "1", "2")),  # "EXP-D"
    *(f"exp:{g}" for g in ("0.5", "1", "2")),
    *(f"rect:{g}" for g in ("0.25", "0.5", "1", "2", "4")),
    "ste",
)
SEED001_MODES = (*(f"bptt:{s}" for s in SEED001_SURROGATES), "bptr", "ann")
SEED000_MODES = ("bptt:sigmoid:4", "bptt:atan:2")


@dataclass(frozen=True)
class GradientMode:
    """A parsed gradient mode; ``param`` is the surrogate spec (bptt) or ``family:a`` (adaptive)."""

    kind: str = "native"
    param: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.param}" if self.param else self.kind

    @property
    def exact(self) -> bool:
        """True when the forward pass in this mode is the model's own (all but ``ann``)."""
        return self.kind != "ann"

    def bind(self, model: nn.Module) -> ModeBinding:
        """A reusable context for ``model``; adaptive statistics live as long as the binding."""
        return ModeBinding(self, model)


def parse_gradient_mode(spec: str | GradientMode | None) -> GradientMode:
    """Parse a spec from the table in the module docstring (``None`` means ``native``)."""
    if isinstance(spec, GradientMode):
        return spec
    if spec is None:
        return GradientMode()
    kind, _, param = str(spec).strip().lower().partition(":")
    if kind not in KINDS:
        raise ConvertSNNError(
            f"unknown gradient mode '{spec}'; use native, bptt:FAMILY[:G][:abs][:detach], bptr, "
            "ann or adaptive[:FAMILY[:A]][:detach]"
        )
    if kind in ("native", "bptr", "ann"):
        if param:
            raise ConvertSNNError(f"gradient mode '{kind}' takes no parameter, got '{spec}'")
        return GradientMode(kind)
    if kind == "bptt":
        return GradientMode(kind, str(parse_surrogate(param or "triangle")))
    detach = param == "detach" or param.endswith(":detach")
    param = param.removesuffix("detach").removesuffix(":")
    family, _, coefficient = (param or "triangle").partition(":")
    try:
        a = float(coefficient) if coefficient else 0.8
    except ValueError:
        raise ConvertSNNError(
            f"adaptive coefficient in '{spec}' is not a number; write e.g. adaptive:triangle:0.8"
        ) from None
    check_adaptive(family, a)
    return GradientMode(kind, f"{family}:{a:g}" + (":detach" if detach else ""))


class ModeBinding:
    """Puts one model into one gradient mode, each time it is entered (``with binding(): ...``).

    For ``adaptive`` every neuron gets its own :class:`AdaptiveSurrogate`, created with the
    binding, so one attack run (one binding) keeps its statistics across steps.
    """

    def __init__(self, mode: GradientMode, model: nn.Module) -> None:
        if mode.kind != "native" and not isinstance(model, SpikingNetwork):
            raise ConvertSNNError(
                f"gradient mode '{mode}' needs a SpikingNetwork, got {type(model).__name__}"
            )
        self.mode, self.model = mode, model
        self.surrogates = {}
        if mode.kind == "adaptive":
            family, a, *detach = mode.param.split(":")
            self.surrogates = {n: AdaptiveSurrogate(n, family, float(a), detach_reset=bool(detach))
                               for n in model.neurons()}  # fmt: skip

    @contextmanager
    def __call__(self) -> Iterator[nn.Module]:
        kind, model = self.mode.kind, self.model
        if kind == "native":
            yield model
        elif kind == "adaptive":
            with model.gradient("bptt"):
                for neuron, surrogate in self.surrogates.items():
                    neuron.surrogate = surrogate
                yield model  # model.gradient restores every neuron's surrogate on exit
        else:
            with model.gradient(kind, self.mode.param or None):
                yield model


class ModelInMode(nn.Module):
    """``model`` always run in one gradient mode, e.g. ``ModelInMode(snn, "ann")`` is the
    source ANN (same weights, ReLU), and a wrapper that fixes the mode for external attack code."""

    def __init__(self, model: SpikingNetwork, mode: str | GradientMode) -> None:
        super().__init__()
        self.model = model
        self.mode = parse_gradient_mode(mode)
        self.binding = self.mode.bind(model)

    def forward(self, x):
        with self.binding():
            return self.model(x)

    @property
    def encoder(self):
        """The wrapped SNN's input encoder (random draws stay random in every mode)."""
        return self.model.encoder

    def __str__(self) -> str:
        return f"{type(self.model).__name__} in {self.mode} mode"
