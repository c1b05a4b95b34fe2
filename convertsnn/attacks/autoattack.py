"""pyautoattack (Croce & Hein 2020, fra31/auto-attack) as one run of a suite.

AutoAttack sees a differentiable classifier, so the SNN is handed over in the run's gradient
mode; ``ann`` is refused, since AutoAttack would then judge the ANN proxy, not the SNN. The
candidate points it returns are judged on the model itself by the ensemble, like every run.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.base import Attack
from convertsnn.attacks.gradient_modes import GradientMode
from convertsnn.errors import ConvertSNNError

VERSIONS = ("standard", "rand")
NORM_NAMES = {"linf": "Linf", "l2": "L2"}


class _InMode(nn.Module):
    """The attacked model, every call inside the attack's gradient-mode binding."""

    def __init__(self, attack: Attack) -> None:
        super().__init__()
        self.attack = attack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.attack._binding():
            return self.attack.model(x)


class AutoAttackRun(Attack):
    """pyautoattack's ``standard`` (APGD-CE, APGD-T, FAB-T, Square-5000) or ``rand`` version
    (APGD-CE and APGD-DLR with EOT over 20 draws) on the model in ``gradient_mode``."""

    name = "autoattack"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        version: str = "standard",
        gradient_mode: str | GradientMode | None = None,
    ) -> None:
        super().__init__(model, eps, norm, eot, gradient_mode)
        if version not in VERSIONS:
            raise ConvertSNNError(f"unknown AutoAttack version '{version}'; use standard or rand")
        if not self.gradient_mode.exact:
            raise ConvertSNNError("AutoAttack cannot use the 'ann' gradient mode (it would judge "
                                  "the ANN proxy); choose a bptt, bptr or adaptive mode")  # fmt: skip
        self.version = version

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack import AutoAttack

        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # the ensemble seeds every batch
        adversary = AutoAttack(_InMode(self), eps=self.eps, norm=NORM_NAMES[self.norm],
                               version=self.version, seed=seed, device=x.device)  # fmt: skip
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv.to(x.device)
