"""Objectives by name: ``@register_objective`` on a class, ``get_objective(name, **settings)``."""

from __future__ import annotations

from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import Objective

_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Register an :class:`Objective` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _OBJECTIVES[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    """Names of all registered objectives, sorted."""
    return sorted(_OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``, or a one-line error naming the known ones."""
    if name not in _OBJECTIVES:
        raise ConvertSNNError(
            f"unknown objective '{name}'; choose one of {', '.join(list_objectives())}"
        )
    return _OBJECTIVES[name]


def get_objective(name: str, **settings) -> Objective:
    """Build the objective ``name`` with its settings (eps, steps, alpha, beta, random_start)."""
    return objective_class(name)(**settings)
