"""Make robustbench 1.1.1 importable as installed from PyPI.

robustbench imports ``autoattack`` (``from autoattack import AutoAttack``, ``from
autoattack.state import EvaluationState``), which PyPI ships as ``pyautoattack``, and
``pkg_resources``, which setuptools 81 removed. :func:`import_robustbench` installs module
aliases for both (only where the real module is missing) and imports robustbench quietly.

robustbench's ``load_model`` calls ``torch.load`` without ``weights_only``, which unpickles code
when torch defaults to ``weights_only=False`` (torch < 2.6, or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``).
:func:`import_robustbench` therefore gives ``robustbench.utils`` (and timm's checkpoint loaders,
which robustbench uses for some models) a ``torch`` whose ``load`` always passes
``weights_only=True``, whatever the caller or the environment asks for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from importlib import resources
from typing import Any

import torch

# pyautoattack's modules that do not need TensorFlow.
_AUTOATTACK_MODULES = (
    "autoattack",
    "autopgd_base",
    "checks",
    "fab_base",
    "fab_projections",
    "fab_pt",
    "other_utils",
    "square",
    "state",
)


def install_autoattack_alias() -> None:
    """Let ``import autoattack`` (and ``autoattack.state`` etc.) load pyautoattack."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    package = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = package
    for name in _AUTOATTACK_MODULES:
        sys.modules[f"autoattack.{name}"] = importlib.import_module(f"pyautoattack.{name}")


def install_pkg_resources_shim() -> None:
    """Provide the one ``pkg_resources`` function robustbench uses when setuptools lacks it."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda package, path: str(resources.files(package) / path)
    sys.modules["pkg_resources"] = shim


class WeightsOnlyTorch(types.ModuleType):
    """``torch`` for third-party modules: everything as in torch, but ``load`` never unpickles code."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("pickle_module", None)
        kwargs["weights_only"] = True  # explicit, so no environment variable can override it
        return torch.load(f, *args, **kwargs)


# modules that call torch.load on downloaded checkpoints
TIMM_CHECKPOINT_LOADERS = ("timm.models._hub", "timm.models._helpers")
CHECKPOINT_LOADERS = ("robustbench.utils", *TIMM_CHECKPOINT_LOADERS)


def force_weights_only_loads(modules: tuple[str, ...] = CHECKPOINT_LOADERS) -> None:
    """Make every ``torch.load`` of these modules (default: robustbench's, timm's) weights-only."""
    for name in modules:
        module = importlib.import_module(name)
        if not isinstance(module.torch, WeightsOnlyTorch):
            module.torch = WeightsOnlyTorch()


def import_robustbench() -> types.ModuleType:
    """``import robustbench`` (with ``robustbench.utils``) after installing the aliases."""
    install_autoattack_alias()
    install_pkg_resources_shim()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("robustbench")
        importlib.import_module("robustbench.utils")
        force_weights_only_loads()
    return module
