"""Architectures that convertsnn builds itself, by name (a small timm-style registry)."""

from convertsnn.models import cifar_resnet, mnist  # noqa: F401  (registers architectures)
from convertsnn.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
