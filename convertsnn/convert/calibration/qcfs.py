"""QCFS: conversion-aware finetuning of the ANN (Bu et al., ICLR 2022, "Optimal ANN-SNN
conversion for high-accuracy and ultra-low-latency spiking neural networks";
github putshua/ANN_SNN_QCFS).

Every activation becomes the quantisation-clip-floor-shift function

    h(x) = theta * clamp(floor(x * L / theta + 1/2) / L, 0, 1)

with a learnable threshold ``theta`` per layer (initialised to the p-th percentile of the
layer's activations) and ``L`` levels, the floor passed straight through in the backward pass.
The ANN is finetuned briefly, the activations are turned back into ReLUs, and each ``theta``
becomes the IF threshold; with reset by subtraction and a membrane starting at ``theta / 2`` (the
converter's defaults) the SNN's expected output equals ``h`` at any T.

The paper trains from scratch for hundreds of epochs; here a pretrained ANN is finetuned for a
few epochs on the calibration images (``epochs``, default 3, batch 64, SGD with learning rate
0.002 and momentum 0.9, cosine schedule, weight decay 5e-4, random crop + flip for image
batches; larger learning rates diverge on BN-folded ResNets), distilling the
original ANN's soft predictions (cross-entropy to its softmax), so no labels are needed and a
small set does not overfit. Give it a few thousand training images for CIFAR-sized nets.

With ``eps > 0`` the finetuning is robust distillation instead (RSLAD: Zi et al., ICCV 2021), so
that a robust source ANN stays robust with quantised activations: the loss is
``beta * CE(h(x'), A(x)) + (1 - beta) * CE(h(x), A(x))``, ``A(x)`` the original ANN's soft
predictions on the clean images, ``x'`` from ``steps`` PGD steps of ``2.5 eps / steps`` from a
uniform start in the L-inf eps-ball maximising ``KL(A(x) || h(x'))`` through the
straight-through floor (``beta`` 5/6 as in RSLAD).

Spec: ``qcfs[:L=4,epochs=3,lr=0.002,p=99.9,batch=64,seed=0,eps=0,steps=3,beta=0.8333]`` (a bare
number is ``L``; ``eps`` may be written ``2/255``).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.convert.calibration.observers import observe_activations
from convertsnn.convert.calibration.registry import (
    CalibrationMethod,
    parse_options,
    register_calibration,
)
from convertsnn.convert.graph import activation_names
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.inner import InnerPGD


class QCFSActivation(nn.Module):
    """``theta * clamp(floor(x L / theta + 1/2) / L, 0, 1)`` with a learnable scalar theta."""

    def __init__(self, threshold: float, levels: int) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.threshold.clamp(min=1e-3)
        y = (x / theta).clamp(0, 1) * self.levels + 0.5
        y = y + (y.floor() - y).detach()  # straight-through floor
        return y / self.levels * theta


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of an image batch [B, C, H, W]."""
    if x.dim() != 4 or min(x.shape[-2:]) < 16:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack(
        [padded[i, :, y : y + h, z : z + w] for i, (y, z) in enumerate(zip(dy, dx, strict=True))]
    )
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)


@register_calibration
class QCFS(CalibrationMethod):
    """``qcfs[:L=4,...]``: finetune the ANN with QCFS activations; thresholds = learned theta."""

    name = "qcfs"
    defaults: ClassVar[dict] = {"L": 4, "epochs": 3, "lr": 0.002, "p": 99.9, "batch": 64, "seed": 0,
                                "eps": 0.0, "steps": 3, "beta": 5 / 6}  # fmt: skip

    def __init__(self, arg: str | None = None) -> None:
        options = parse_options(self.name, arg, self.defaults)
        self.levels, self.epochs, self.lr = options["L"], options["epochs"], options["lr"]
        self.p, self.batch, self.seed = options["p"], options["batch"], options["seed"]
        self.eps, self.steps, self.beta = options["eps"], options["steps"], options["beta"]
        if (
            self.levels < 1 or self.epochs < 0 or self.batch < 1 or not self.lr > 0
            or self.eps < 0 or self.steps < 1 or not 0 <= self.beta <= 1
        ):  # fmt: skip
            raise ConvertSNNError(
                f"qcfs needs L >= 1, epochs >= 0, batch >= 1, lr > 0, eps >= 0, steps >= 1 and "
                f"beta in [0, 1]; got '{arg}'"
            )
        self._thresholds: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    def prepare_ann(
        self, ann: fx.GraphModule, loader: DataLoader | None, device: torch.device
    ) -> fx.GraphModule:
        names = activation_names(ann)
        observers = observe_activations(ann, names, loader, device, desc="QCFS init")
        teacher = copy.deepcopy(ann).eval()
        originals = {}
        for name in names:
            originals[name] = ann.get_submodule(name)
            theta = observers[name].percentile(self.p).item()
            clip = getattr(originals[name], "max_val", None)  # ReLU6 / Hardtanh(0, m)
            theta = min(theta, clip) if clip is not None else theta
            ann.add_submodule(name, QCFSActivation(max(theta, 1e-3), self.levels).to(device))
        self._finetune(ann, teacher, loader, device)
        for name in names:
            self._thresholds[name] = ann.get_submodule(name).threshold.detach().clamp(min=1e-3)
            ann.add_submodule(name, originals[name])
        return ann

    def _finetune(
        self, ann: nn.Module, teacher: nn.Module, loader: DataLoader, device: torch.device
    ) -> None:
        images = torch.cat([x for x, _ in loader])
        params = [p for p in ann.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)
        steps = self.epochs * -(-len(images) // self.batch)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        generator = torch.Generator().manual_seed(self.seed)
        attack = InnerPGD(ann, self.eps, self.steps, 2.5 * self.eps / self.steps, loss="kl")
        ann.eval()  # BatchNorm layers that could not be folded keep their statistics
        for epoch in range(self.epochs):
            order = torch.randperm(len(images), generator=generator)
            total, count = 0.0, 0
            bar = tqdm(order.split(self.batch), desc=f"QCFS finetune {epoch + 1}/{self.epochs}")
            for index in bar:
                x = augment(images[index], generator).to(device)
                with torch.no_grad():
                    reference = teacher(x)
                target = F.softmax(reference, dim=1)
                loss = F.cross_entropy(ann(x), target)
                if self.eps > 0:
                    robust = F.cross_entropy(ann(attack(x, reference)), target)
                    loss = self.beta * robust + (1 - self.beta) * loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total, count = total + loss.item() * len(index), count + len(index)
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            self.history.append({"epoch": epoch + 1, "distill_loss": total / max(count, 1)})
        ann.zero_grad(set_to_none=True)

    def thresholds(
        self,
        ann: fx.GraphModule,
        activations: list[str],
        loader: DataLoader | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        missing = [name for name in activations if name not in self._thresholds]
        if missing:
            raise ConvertSNNError(f"qcfs has no trained threshold for {', '.join(missing)}")
        return {name: self._thresholds[name].cpu() for name in activations}

    def __str__(self) -> str:
        robust = f",eps={self.eps:g},steps={self.steps},beta={self.beta:g}" if self.eps else ""
        return f"qcfs:L={self.levels},epochs={self.epochs},lr={self.lr:g}{robust}"
