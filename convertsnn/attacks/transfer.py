"""Transfer attack: craft adversarial examples on a source model, use them on the target.

By default the source is the SNN's own source ANN (the same weights with ReLU, one step:
``ModelInMode(snn, "ann")``), as in seed 001's black-box evaluation. Unlike the white-box
``ann`` gradient mode, the target is never queried while crafting: the attack runs entirely on
the source and the target only sees its final output. Any model file can be the source
(``source="PATH"``): an SNN file (attacked in its own gradient mode) or any source the importers
read (:func:`convertsnn.importers.load_ann`: ONNX, checkpoints, ``timm:``, ``robustbench:``,
``zoo:``).
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.attacks.apgd import APGD
from convertsnn.attacks.base import Attack
from convertsnn.attacks.gradient_modes import ModelInMode
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork


class Transfer(Attack):
    """APGD on a source model, transferred to ``model``.

    Args:
        model, eps, norm, eot: see :class:`Attack` (``eot`` applies to a stochastic source).
        source: the model to attack instead, or a file / source string to load it from
            (:func:`load_source`); default: the source ANN of ``model`` (an SNN).
        steps, loss, restarts: of the APGD run on the source (100, ``"ce"``, 1).

    Example: ``Transfer(snn, eps=8/255)(x, y)`` (APGD-CE-100 on the source ANN).
    """

    name = "transfer"
    blackbox = True

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        eot: int = 1,
        source: nn.Module | str | None = None,
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
    ) -> None:
        super().__init__(model, eps, norm, eot)
        if source is None:
            if not isinstance(model, SpikingNetwork):
                raise ConvertSNNError("a transfer attack on a non-SNN model needs a source model")
            source = ModelInMode(model, "ann")
        if isinstance(source, str):
            device = next(model.parameters(), torch.empty(0)).device
            source = load_source(source, device)
        self.source = source
        self.inner = APGD(source, eps, norm, eot, steps=steps, loss=loss, restarts=restarts)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner(x, y)

    def costed_models(self) -> tuple[nn.Module, ...]:
        return (self.model, self.source)


def load_source(source: str, device: torch.device | str = "cpu") -> nn.Module:
    """A transfer source: an SNN file, else any source :func:`convertsnn.importers.load_ann`
    reads; in eval mode on ``device``."""
    from convertsnn.importers import load_ann
    from convertsnn.snn.serialize import FORMAT, load_snn, read_document

    if source.endswith(".safetensors"):
        try:
            is_snn = read_document(source)[0].get("format") == FORMAT
        except ConvertSNNError:  # e.g. a plain state dict: the importers say what they need
            is_snn = False
        if is_snn:
            return load_snn(source, device)
    return load_ann(source).model.to(device).eval()
