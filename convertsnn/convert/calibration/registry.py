"""Registry of threshold calibration methods ("recipes"), addressed by spec strings.

A spec is ``NAME`` or ``NAME:ARG`` (e.g. ``max``, ``percentile:99.9``). Each method lives in its
own module and registers a :class:`CalibrationMethod` subclass with :func:`register_calibration`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import fx
from torch.utils.data import DataLoader

from convertsnn.errors import ConvertSNNError
from convertsnn.numbers import parse_number

_METHODS: dict[str, type[CalibrationMethod]] = {}


class CalibrationMethod:
    """Picks a threshold for every activation of a normalised ANN graph.

    Subclasses set ``name`` and implement :meth:`thresholds`; they may also change the ANN before
    calibration (:meth:`prepare_ann`, e.g. conversion-aware finetuning) or correct the SNN after
    conversion (:meth:`correct_snn`, e.g. bias calibration). ``arg`` is the text after the colon
    of the spec, or None.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    depends_on_timesteps: ClassVar[bool] = False  # True: the result is tuned for the SNN's T
    input_size: tuple[int, ...] | None = None  # [C, H, W] when known; set by the converter

    def __init__(self, arg: str | None = None) -> None:
        if arg is not None:
            raise ConvertSNNError(f"calibration '{self.name}' takes no argument, got '{arg}'")

    def prepare_ann(
        self, ann: fx.GraphModule, loader: DataLoader | None, device: torch.device
    ) -> fx.GraphModule:
        """Return the ANN to convert (default: unchanged)."""
        return ann

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """One threshold (scalar or per-channel tensor) per activation module name."""
        raise NotImplementedError

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        """Adjust the converted SNN in place (default: nothing)."""

    def __str__(self) -> str:
        return self.name


def parse_options(spec: str, arg: str | None, defaults: dict[str, float | int]) -> dict:
    """Parse a method argument ``"K=V,K=V"`` (or a bare value for the first key) into
    ``defaults`` updated with the given values, converted to the defaults' types."""
    options = dict(defaults)
    if arg is None or not arg.strip():
        return options
    first = next(iter(defaults))
    for i, part in enumerate(arg.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = (first, key) if i == 0 else (key, "")
        key = key.strip()
        if key not in defaults or not value.strip():
            raise ConvertSNNError(
                f"bad option '{part}' in calibration '{spec}:{arg}'; write KEY=VALUE with KEY one "
                f"of {', '.join(defaults)}"
            )
        options[key] = type(defaults[key])(
            parse_number(value, f"option {key} of calibration '{spec}'")
        )
    return options


def register_calibration(cls: type[CalibrationMethod]) -> type[CalibrationMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _METHODS[cls.name] = cls
    return cls


def list_calibrations() -> list[str]:
    return sorted(_METHODS)


def get_calibration(spec: str | CalibrationMethod) -> CalibrationMethod:
    """Instantiate the method named by ``spec`` (``NAME`` or ``NAME:ARG``)."""
    if isinstance(spec, CalibrationMethod):
        return spec
    name, sep, arg = str(spec).strip().partition(":")
    if name not in _METHODS:
        raise ConvertSNNError(
            f"unknown calibration '{spec}'; choose one of {', '.join(list_calibrations())}"
        )
    return _METHODS[name](arg if sep else None)
