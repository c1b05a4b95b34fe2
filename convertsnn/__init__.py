"""convertsnn: turn adversarially trained ANNs into adversarially robust spiking networks.

The names below are imported on first use (PEP 562), so that ``import convertsnn`` and the
command line's ``--help`` and ``--version`` do not wait for torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

__all__ = ["SpikingNetwork", "__version__", "convert", "load_snn", "save_snn", "zoo"]

_LAZY = {
    "SpikingNetwork": "convertsnn.snn.network",
    "load_snn": "convertsnn.snn.serialize",
    "save_snn": "convertsnn.snn.serialize",
}


def __getattr__(name: str):
    if name == "zoo":
        return importlib.import_module("convertsnn.zoo")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convertsnn' has no attribute '{name}'")


class _Package(types.ModuleType):
    """``convertsnn.convert`` is the :func:`~convertsnn.convert.converter.convert` function,
    not the subpackage of that name (importing the subpackage does not replace it)."""

    @property
    def convert(self):
        from convertsnn.convert.converter import convert

        return convert

    @convert.setter
    def convert(self, _subpackage: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
