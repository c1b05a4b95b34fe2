"""What every importer returns: the ANN (taking images in [0, 1]) and its preprocessing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from torch import nn

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
    mean = preprocessing.mean or (0.0,) * channels
    std = preprocessing.std or (1.0,) * channels
    return nn.Sequential(Normalize(mean, std), net)
