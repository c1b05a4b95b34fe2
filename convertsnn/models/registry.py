"""Registry of named architectures: ``@register_model`` and ``create_model(name, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from convertsnn.errors import ConvertSNNError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an architecture under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with its keyword arguments (e.g. ``num_classes``)."""
    if name not in _MODELS:
        raise ConvertSNNError(f"unknown architecture '{name}'; known: {', '.join(list_models())}")
    try:
        return _MODELS[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise ConvertSNNError(f"bad arguments for architecture '{name}': {err}") from None
