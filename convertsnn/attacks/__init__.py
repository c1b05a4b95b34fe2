"""Adversarial attacks in pixel space; one class per file."""

from convertsnn.attacks.base import Attack
from convertsnn.attacks.fgsm import FGSM
from convertsnn.attacks.pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD}

__all__ = ["ATTACKS", "FGSM", "PGD", "Attack"]
