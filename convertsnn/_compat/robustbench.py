"""Make robustbench 1.1.1 importable as installed from PyPI.

robustbench imports ``autoattack`` (``from autoattack import AutoAttack``, ``from
autoattack.state import EvaluationState``), which PyPI ships as ``pyautoattack``, and
``pkg_resources``, which setuptools 81 removed. :func:`import_robustbench` installs module
aliases for both (only where the real module is missing) and imports robustbench quietly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from importlib import resources

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


def import_robustbench() -> types.ModuleType:
    """``import robustbench`` (with ``robustbench.utils``) after installing the aliases."""
    install_autoattack_alias()
    install_pkg_resources_shim()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module("robustbench")
        importlib.import_module("robustbench.utils")
    return module
