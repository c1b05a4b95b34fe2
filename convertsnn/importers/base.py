"""What every importer returns: the ANN (taking images in [0, 1]) and its preprocessing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.layers import Normalize


@dataclass
class Preprocessing:
    """How the source model expects its input; normalisation is applied inside the model.

    ``mean``/``std`` per channel (None: the model takes raw [0, 1] pixels), ``input_size`` as
    (C, H, W) and ``num_classes`` when known.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, ...] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse a std that is not positive, and mean/std/input size of different channels."""
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and (
                not values
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            ):
                raise ConvertSNNError(
                    f"{name} must be finite numbers, one per channel; got {values}"
                )
        if self.std is not None and min(self.std) <= 0:
            raise ConvertSNNError(f"std must be positive for every channel, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConvertSNNError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel"
            )
        if self.input_size is not None and (not self.input_size or min(self.input_size) < 1):
            raise ConvertSNNError(
                f"input size must be positive integers (C,H,W for images), got {self.input_size}"
            )
        given = self.mean or self.std
        if given and self.input_size and len(given) != self.input_size[0]:
            raise ConvertSNNError(
                f"mean/std have {len(given)} values but the model takes {self.input_size[0]} "
                "channels; give one value per channel"
            )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def updated(self, other: Preprocessing | None) -> Preprocessing:
        """A copy of these settings with every field that ``other`` sets taken from ``other``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if other is not None:
            values.update({k: v for k, v in asdict(other).items() if v is not None})
        return Preprocessing(**values)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        def tup(value):
            return tuple(value) if value is not None else None

        return cls(
            mean=tup(data.get("mean")),
            std=tup(data.get("std")),
            input_size=tup(data.get("input_size")),
            num_classes=data.get("num_classes"),
        )


@dataclass
class LoadedANN:
    """An imported ANN: ``model`` takes images in [0, 1] (normalisation included)."""

    model: nn.Module
    preprocessing: Preprocessing
    source: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """Facts to store with a model converted from this ANN."""
        return {
            "source": self.source,
            "preprocessing": self.preprocessing.to_dict(),
            "input_size": list(self.preprocessing.input_size or []) or None,
            "num_classes": self.preprocessing.num_classes,
        }


def with_normalization(net: nn.Module, preprocessing: Preprocessing) -> nn.Module:
    """Prepend a :class:`Normalize` layer when the preprocessing has mean/std."""
    if preprocessing.mean is None and preprocessing.std is None:
        return net
    channels = len(preprocessing.mean or preprocessing.std)
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != channels:
        raise ConvertSNNError(
            f"mean/std have {channels} values but the model's first convolution takes "
            f"{first.in_channels} channels; give one value per channel"
        )
    mean = preprocessing.mean or (0.0,) * channels
    std = preprocessing.std or (1.0,) * channels
    return nn.Sequential(Normalize(mean, std), net)
