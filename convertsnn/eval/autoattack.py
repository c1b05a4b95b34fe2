"""Cross-check with the reference AutoAttack (pyautoattack, Croce & Hein 2020) on the SNN.

AutoAttack only sees a differentiable classifier, so the SNN is handed over in one gradient mode
(``ModelInMode``); the ``ann`` mode is refused, since AutoAttack would then attack and judge the
ANN proxy, not the SNN. ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square-5000;
``"rand"`` (for stochastic models) runs APGD-CE and APGD-DLR with EOT over 20 draws. The warnings
of AutoAttack's own checks are returned with the result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convertsnn.attacks.autoattack import NORM_NAMES, VERSIONS
from convertsnn.attacks.ensemble import expected_correct
from convertsnn.attacks.gradient_modes import ModelInMode, parse_gradient_mode
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.settings import EvalSettings
from convertsnn.snn.network import SpikingNetwork


@dataclass
class AutoAttackResult:
    """Robust accuracy (expected over ``eot`` draws), per-sample correctness, AA's warnings."""

    version: str
    mode: str
    robust: float
    correct: torch.Tensor
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"version": self.version, "mode": self.mode, "robust": self.robust,
                "seconds": self.seconds, "warnings": self.warnings}  # fmt: skip


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    version: str = "standard",
    mode: str = "native",
    state_path: str | Path | None = None,
) -> AutoAttackResult:
    """Run pyautoattack on ``model`` (an SNN in gradient ``mode``, or any classifier) at
    ``settings.eps``; correctness is judged with ``settings.eot`` draws."""
    from pyautoattack import AutoAttack

    if version not in VERSIONS:
        raise ConvertSNNError(f"unknown AutoAttack version '{version}'; use standard or rand")
    parsed = parse_gradient_mode(mode)
    if not parsed.exact:
        raise ConvertSNNError("AutoAttack cannot use the 'ann' gradient mode (it would judge the "
                              "ANN proxy); choose a bptt, bptr or adaptive mode")  # fmt: skip
    wrapped = ModelInMode(model, parsed) if isinstance(model, SpikingNetwork) else model
    if parsed.kind == "native":
        from convertsnn.eval.suites import native_mode

        parsed = native_mode(model)  # name the surrogate AutoAttack saw
    wrapped.eval()
    adversary = AutoAttack(wrapped, eps=settings.eps, norm=NORM_NAMES[settings.norm],
                           version=version, seed=settings.seed, device=x.device)  # fmt: skip
    collect = _Collect()
    adversary.logger.addHandler(collect)
    start = time.perf_counter()
    try:
        x_adv, _ = adversary.run_standard_evaluation(
            x,
            y,
            batch_size=settings.batch_size,
            state_path=Path(state_path) if state_path else None,
        )
    finally:
        adversary.logger.removeHandler(collect)
    correct = expected_correct(model, x_adv.to(x.device), y, settings.eot, settings.batch_size)
    if state_path:  # after a resume, x_adv holds clean images for samples broken earlier
        from pyautoattack.state import EvaluationState

        flags = EvaluationState.from_disk(Path(state_path)).robust_flags.to(correct.device)
        correct = torch.minimum(correct, flags.float())
    return AutoAttackResult(version, str(parsed), float(correct.mean()), correct,
                            time.perf_counter() - start, collect.messages)  # fmt: skip
