"""What an attack costs, in image-passes: forward and backward passes of the model, counted
per image (a batch of 32 images through the model is 32 forward passes).

Counted with module hooks, so every pass counts, whoever makes it (the attack's own steps, EOT
draws, the extra forward of the ``ann`` mode, pyautoattack, a transfer source); a pass of a
counted model inside another counted model (e.g. the SNN inside ``ModelInMode``) counts once. A
pass of the ANN proxy counts like one of the SNN. The reference unit is one PGD-20 run
(:func:`pgd20_passes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

PGD20_STEPS = 20


@dataclass
class PassCount:
    """Forward and backward image-passes."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        """Forward plus backward passes (a backward counts as one pass, like a forward)."""
        return self.forward + self.backward

    def add(self, other: PassCount) -> None:
        self.forward += other.forward
        self.backward += other.backward


def pgd20_passes(images: int, eot: int = 1) -> int:
    """Image-passes of one PGD-20 run on ``images`` images: per image and EOT draw, 20 forward
    and 20 backward passes (one per step) plus 1 forward (the final check): 41."""
    return images * eot * (2 * PGD20_STEPS + 1)


@contextmanager
def counting_passes(*models: nn.Module) -> Iterator[PassCount]:
    """Count the image-passes of ``models`` inside the block (hooks removed after).

    A forward counts the batch size of the output; a backward counts it when a gradient flows
    back through that output."""
    count = PassCount()
    depth = 0

    def entering(module: nn.Module, args) -> None:
        nonlocal depth
        depth += 1

    def leaving(module: nn.Module, args, output) -> None:
        nonlocal depth
        depth -= 1
        if depth or not torch.is_tensor(output) or output.dim() == 0:
            return
        images = output.shape[0]
        count.forward += images
        if output.requires_grad:

            def backward(grad: torch.Tensor) -> None:
                count.backward += images

            output.register_hook(backward)

    handles = []
    for model in models:
        handles.append(model.register_forward_pre_hook(entering))
        handles.append(model.register_forward_hook(leaving, always_call=True))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()
