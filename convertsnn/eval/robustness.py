"""Clean and adversarial accuracy of an SNN over timesteps, next to its source ANN.

The ANN row is the SNN itself in ``ann`` gradient mode: the same weights with ReLU instead of
spiking neurons, run for one step, i.e. the source ANN with BatchNorm folded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.attacks.base import Attack
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


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (no gradients)."""
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for x, y in tqdm(loader, desc=desc or "clean", leave=False):
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / max(total, 1)


def robust_accuracy(
    model: nn.Module, attack: Attack, loader: DataLoader, device: torch.device, desc: str = ""
) -> float:
    """Accuracy on adversarial examples; samples misclassified when clean count as broken."""
    correct = total = 0
    for x, y in tqdm(loader, desc=desc or attack.name, leave=False):
        x, y = x.to(device), y.to(device)
        clean_ok = attack.predict(x) == y
        x_adv = x.clone()
        if clean_ok.any():
            x_adv[clean_ok] = attack(x[clean_ok], y[clean_ok])
        correct += (clean_ok & (attack.predict(x_adv) == y)).sum().item()
        total += len(y)
    return correct / max(total, 1)


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
    """Rows for the ANN (optional) and for the SNN at each T.

    ``attack_timesteps`` limits the attacks to some T (default: all); other rows get clean
    accuracy only. ``surrogate`` overrides the model's surrogate for the attacks' BPTT.
    """
    device = torch.device(device)
    snn = snn.to(device).eval()
    original_t = snn.timesteps
    settings: list[tuple[str, int | None]] = [("ANN", None)] if include_ann else []
    settings += [("SNN", t) for t in timesteps]
    rows = []
    try:
        for name, steps in settings:
            start = time.perf_counter()
            mode = "ann" if steps is None else "bptt"
            with snn.gradient(mode, surrogate if steps is not None else None):
                if steps is not None:
                    snn.timesteps = steps
                label = name if steps is None else f"{name} T={steps}"
                row = EvalRow(label, steps, accuracy(snn, loader, device, f"{label} clean"))
                attack_here = make_attack is not None and (
                    steps is None or attack_timesteps is None or steps in attack_timesteps
                )
                for eps in eps_values if attack_here else ():
                    attack = make_attack(snn, eps)
                    row.robust[f"{eps:.6g}"] = robust_accuracy(
                        snn, attack, loader, device, f"{label} {attack.name} eps={eps:.4g}"
                    )
            row.seconds = time.perf_counter() - start
            rows.append(row)
    finally:
        snn.timesteps = original_t
    return rows
