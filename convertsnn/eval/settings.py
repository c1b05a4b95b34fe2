"""The settings one robustness evaluation hands to all its parts: the suite and its probe, the
worst-case ensemble, the sanity checks and the AutoAttack cross-check (docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convertsnn.attacks.autoattack import VERSIONS
from convertsnn.attacks.base import NORMS
from convertsnn.errors import ConvertSNNError

STOCHASTIC_EOT = 20  # draws per gradient and per accuracy estimate for random encoders


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation attacks and counts; change one field with ``dataclasses.replace``.

    Args:
        eps: radius of the threat model (e.g. 8/255 for L-inf).
        norm: ``"linf"`` or ``"l2"``.
        eot: draws per gradient and per correctness estimate (1 for deterministic models, see
            :func:`default_eot`).
        batch_size: samples per attack call and per forward pass.
        seed: base seed; every (run, batch) is seeded from it.
        probe_samples: correctly classified images the probe ranks the gradient modes on.
        check_samples: correctly classified images the attacking sanity checks use.
        reparametrisation_samples: images of the reparametrisation check (0: skip it).
        sanity: end every suite with the more-steps run and run the sanity checks.
        progress: show progress bars.
        autoattack: pyautoattack version of the cross-check (``"standard"``, ``"rand"``), or
            None for none.
        autoattack_mode: the gradient mode AutoAttack sees.
    """

    eps: float = 8 / 255
    norm: str = "linf"
    eot: int = 1
    batch_size: int = 256
    seed: int = 0
    probe_samples: int = 128
    check_samples: int = 100
    reparametrisation_samples: int = 32
    sanity: bool = True
    progress: bool = True
    autoattack: str | None = None
    autoattack_mode: str = "native"

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ConvertSNNError(f"eps must be >= 0, got {self.eps}")
        if self.norm not in NORMS:
            raise ConvertSNNError(f"unknown norm '{self.norm}'; choose one of {', '.join(NORMS)}")
        if self.eot < 1 or self.batch_size < 1:
            raise ConvertSNNError(
                f"eot and batch_size must be at least 1, got {self.eot}, {self.batch_size}"
            )
        if min(self.probe_samples, self.check_samples, self.reparametrisation_samples) < 0:
            raise ConvertSNNError("probe, check and reparametrisation samples must be >= 0")
        if self.autoattack is not None and self.autoattack not in VERSIONS:
            raise ConvertSNNError(
                f"unknown AutoAttack version '{self.autoattack}'; use standard or rand"
            )


def default_eot(model: nn.Module) -> int:
    """Draws per estimate for ``model``: :data:`STOCHASTIC_EOT` for a random model (a Poisson
    or Gaussian input encoder, dithered neurons; ``SpikingNetwork.stochastic``), else 1."""
    return STOCHASTIC_EOT if getattr(model, "stochastic", False) else 1
