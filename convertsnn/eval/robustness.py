"""Clean and adversarial accuracy of an SNN over timesteps, next to its source ANN.

The ANN row is the SNN itself in ``ann`` gradient mode: the same weights with ReLU instead of
spiking neurons, run for one step, i.e. the source ANN with BatchNorm folded (on a copy with
bias calibration's shifts taken back; a file whose weights were calibrated for spiking, ``wcal``,
gets no ANN row).

Two entry points: :func:`evaluate_over_timesteps` runs one attack per eps (a quick check, used
in training loops and demos); :func:`evaluate_robustness` runs an attack suite per eps with
per-sample worst case, sanity checks, an optional AutoAttack cross-check and resumable state
(``convertsnn evaluate``).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.attacks.base import Attack
from convertsnn.attacks.ensemble import expected_correct, margins
from convertsnn.attacks.gradient_modes import ModelInMode
from convertsnn.eval.settings import EvalSettings, default_eot
from convertsnn.objectives.distill import take_back_calibration, weight_calibration
from convertsnn.snn.network import SpikingNetwork

AttackFactory = Callable[[nn.Module, float], Attack]


@dataclass
class EvalRow:
    """One model setting: its clean accuracy and robust accuracy per eps (fractions in [0, 1])."""

    model: str
    timesteps: int | None
    clean: float
    robust: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, dict] = field(default_factory=dict)  # per eps: suite, flags, cross-checks


def eps_key(eps: float) -> str:
    """How an eps is written in result dicts (``f"{eps:.6g}"``)."""
    return f"{eps:.6g}"


def accuracy(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    desc: str = "",
    progress: bool = True,
) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (no gradients)."""
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for x, y in tqdm(loader, desc=desc or "clean", leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def robust_accuracy(
    model: nn.Module,
    attack: Attack,
    loader: DataLoader,
    device: torch.device,
    desc: str = "",
    progress: bool = True,
) -> float:
    """Accuracy on adversarial examples; samples misclassified when clean count as broken."""
    correct = total = 0
    for x, y in tqdm(loader, desc=desc or attack.name, leave=False, disable=not progress):
        x, y = x.to(device), y.to(device)
        clean_ok = attack.predict(x) == y
        x_adv = x.clone()
        if clean_ok.any():
            x_adv[clean_ok] = attack(x[clean_ok], y[clean_ok])
        correct += (clean_ok & (attack.predict(x_adv) == y)).sum().item()
        total += len(y)
    return correct / max(total, 1)


@contextmanager
def _model_settings(
    snn: SpikingNetwork, timesteps: Sequence[int], include_ann: bool, surrogate: str | None
) -> Iterator[Iterator[tuple[str, int | None, nn.Module]]]:
    """``(label, T, model)`` for the ANN (the SNN in ``ann`` mode) and the SNN at each T; the
    SNN is set to T (and BPTT with ``surrogate``, if given) while its item is in use."""
    original_t = snn.timesteps

    def items():
        if include_ann and (ann := source_ann_view(snn)) is not None:
            yield "ANN", None, ann
        for steps in timesteps:
            snn.timesteps = steps
            with snn.gradient("bptt", surrogate):
                yield f"SNN T={steps}", steps, snn

    try:
        yield items()
    finally:
        snn.timesteps = original_t


def source_ann_view(snn: SpikingNetwork) -> nn.Module | None:
    """The source ANN to evaluate next to ``snn``: ``snn`` in ``ann`` mode, on a copy with bias
    calibration's shifts taken back if it has any; None, with a warning, when its weights were
    calibrated for spiking (no record leads back to the ANN)."""
    if method := weight_calibration(snn):
        warnings.warn(
            f"no ANN row: this SNN's weights were calibrated for its spiking neurons (calibration "
            f"{method}), so its ANN view is not the source ANN; a file converted without {method} "
            "gives it",
            stacklevel=2,
        )
        return None
    if snn.metadata.get("bias_corrections"):
        snn = copy.deepcopy(snn)
        take_back_calibration(snn)
    return ModelInMode(snn, "ann")


def evaluate_over_timesteps(
    snn: SpikingNetwork,
    loader: DataLoader,
    timesteps: Sequence[int],
    eps_values: Sequence[float] = (),
    make_attack: AttackFactory | None = None,
    include_ann: bool = True,
    attack_timesteps: Sequence[int] | None = None,
    surrogate: str | None = None,
    device: str | torch.device = "cpu",
) -> list[EvalRow]:
    """Rows for the ANN (optional) and for the SNN at each T, one attack per eps.

    ``attack_timesteps`` limits the attacks to some T (default: all); other rows get clean
    accuracy only. ``surrogate`` overrides the model's surrogate for the attacks' BPTT.
    """
    device = torch.device(device)
    snn = snn.to(device).eval()
    rows = []
    with _model_settings(snn, timesteps, include_ann, surrogate) as models:
        for label, steps, model in models:
            start = time.perf_counter()
            row = EvalRow(label, steps, accuracy(model, loader, device, f"{label} clean"))
            if make_attack is not None and _attacked(steps, attack_timesteps):
                for eps in eps_values:
                    attack = make_attack(model, eps)
                    row.robust[eps_key(eps)] = robust_accuracy(
                        model, attack, loader, device, f"{label} {attack.name} eps={eps:.4g}"
                    )
            row.seconds = time.perf_counter() - start
            rows.append(row)
    return rows


def _attacked(steps: int | None, attack_timesteps: Sequence[int] | None) -> bool:
    return steps is None or attack_timesteps is None or steps in attack_timesteps


def evaluate_robustness(
    snn: SpikingNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    timesteps: Sequence[int],
    eps_values: Sequence[float],
    suite,
    settings: EvalSettings | None = None,
    include_ann: bool = True,
    attack_timesteps: Sequence[int] | None = None,
    surrogate: str | None = None,
    state=None,
    adversarial: dict[str, torch.Tensor] | None = None,
) -> list[EvalRow]:
    """Rows for the ANN (optional) and the SNN at each T: clean accuracy, and per eps the
    per-sample worst case of ``suite`` (a :class:`~convertsnn.eval.suites.Suite` or its name).

    ``x``, ``y``: test images in [0, 1] and labels, on the model's device. ``settings``
    (:class:`~convertsnn.eval.settings.EvalSettings`; its ``eps`` is replaced by each of
    ``eps_values``; default: the defaults with :func:`~convertsnn.eval.settings.default_eot`
    draws) says how to attack and count: with ``eot`` > 1 accuracy is an expectation over
    draws; ``sanity`` runs :mod:`convertsnn.eval.sanity` on every result; ``autoattack``
    (``"standard"`` or ``"rand"``) adds the pyautoattack cross-check in ``autoattack_mode``.
    ``state`` (a :class:`~convertsnn.eval.state.StateDir`) makes the run resumable.
    ``row.details[eps]`` holds the suite summary (with its cost and one entry per image under
    ``samples``: survives, the run that broke it, its final margin), flags and cross-checks;
    a dict passed as ``adversarial`` receives the worst point found per image under
    ``"{row} eps={eps}"`` (on the CPU).
    """
    from convertsnn.eval.autoattack import run_autoattack
    from convertsnn.eval.sanity import check_eps_trend, run_checks
    from convertsnn.eval.suites import run_suite

    if settings is None:
        settings = EvalSettings(eot=default_eot(snn))
    eot, batch_size = settings.eot, settings.batch_size
    snn = snn.eval()
    rows = []
    with _model_settings(snn, timesteps, include_ann, surrogate) as models:
        for label, steps, model in models:
            start = time.perf_counter()
            clean = expected_correct(model, x, y, eot, batch_size)
            row = EvalRow(label, steps, float(clean.mean()))
            for eps in eps_values if _attacked(steps, attack_timesteps) else ():
                key = eps_key(eps)
                at_eps = replace(settings, eps=eps)
                slot = state.slot(f"{label}_eps={key}") if state is not None else None
                result = run_suite(suite, model, x, y, at_eps, state=slot)
                if settings.sanity:
                    result.flags = run_checks(model, x, y, result, at_eps)
                row.robust[key] = result.robust
                row.details[key] = result.summary()
                final = margins(model, result.ensemble.x_adv, y, eot, batch_size)
                row.details[key]["samples"] = result.ensemble.samples(final)
                if adversarial is not None:
                    adversarial[f"{label} eps={key}"] = result.ensemble.x_adv.detach().cpu()
                if settings.autoattack:
                    aa_state = (Path(state.path) / f"autoattack_{label}_eps={key}.json"
                                if state is not None else None)  # fmt: skip
                    aa = run_autoattack(model, x, y, at_eps, settings.autoattack,
                                        settings.autoattack_mode, aa_state)  # fmt: skip
                    row.details[key]["autoattack"] = aa.summary()
            if settings.sanity and len(row.robust) > 1:
                trend = check_eps_trend({float(k): v for k, v in row.robust.items()}, len(x))
                row.details[max(row.robust, key=float)]["flags"].append(vars(trend))
            row.seconds = time.perf_counter() - start
            rows.append(row)
    return rows
