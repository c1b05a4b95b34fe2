"""Adversarial attacks in pixel space; one class per file.

``build_attack(name, model, eps, ...)`` makes any of :data:`ATTACKS` by name; ``apgd-ce`` and
``apgd-dlr`` are :class:`APGD` with the CE or DLR loss.
"""

from torch import nn

from convertsnn.attacks.apgd import APGD
from convertsnn.attacks.apgd_targeted import APGDT
from convertsnn.attacks.autoattack import AutoAttackRun
from convertsnn.attacks.base import Attack
from convertsnn.attacks.fgsm import FGSM
from convertsnn.attacks.gradient_modes import (
    SEED000_MODES,
    SEED001_MODES,
    GradientMode,
    ModelInMode,
    parse_gradient_mode,
)
from convertsnn.attacks.pgd import PGD
from convertsnn.attacks.pgd_search import PGDSearch
from convertsnn.attacks.rfgsm import RFGSM
from convertsnn.attacks.square import Square
from convertsnn.attacks.transfer import Transfer
from convertsnn.errors import ConvertSNNError

ATTACKS = {
    "fgsm": FGSM,
    "rfgsm": RFGSM,
    "pgd": PGD,
    "pgd-search": PGDSearch,
    "apgd-ce": APGD,
    "apgd-dlr": APGD,
    "apgd-t": APGDT,
    "square": Square,
    "transfer": Transfer,
    "autoattack": AutoAttackRun,
}


def build_attack(name: str, model: nn.Module, eps: float, norm: str = "linf", eot: int = 1,
                 gradient_mode: str | GradientMode | None = None, **params) -> Attack:  # fmt: skip
    """The attack ``name`` on ``model``; ``params`` are its own arguments (e.g. ``steps=100``).

    Black-box attacks (square, transfer) take no gradient mode.
    """
    if name not in ATTACKS:
        raise ConvertSNNError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}")
    if name in ("apgd-ce", "apgd-dlr"):
        params["loss"] = name.removeprefix("apgd-")
    cls = ATTACKS[name]
    if cls.blackbox and parse_gradient_mode(gradient_mode).kind != "native":
        raise ConvertSNNError(f"{name} is a black-box attack and takes no gradient mode")
    if not cls.blackbox:
        params["gradient_mode"] = gradient_mode
    try:
        return cls(model, eps, norm, eot, **params)
    except TypeError as err:  # an argument the attack does not have
        raise ConvertSNNError(f"attack {name}: {err}") from None


__all__ = [
    "APGD",
    "APGDT",
    "ATTACKS",
    "FGSM",
    "PGD",
    "RFGSM",
    "SEED000_MODES",
    "SEED001_MODES",
    "Attack",
    "AutoAttackRun",
    "GradientMode",
    "ModelInMode",
    "PGDSearch",
    "Square",
    "Transfer",
    "build_attack",
    "parse_gradient_mode",
]
