"""Architectures that convertsnn builds itself, by name (a small timm-style registry)."""

from convertsnn.models import (  # noqa: F401  (registers architectures)
    cifar_resnet,
    densenet,
    mnist,
    preact_resnet,
    vgg,
    wide_resnet,
)
from convertsnn.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
