"""Distillation from the source ANN: the teacher, the ``distill`` regularizer and the base of
the robust distillation objectives (:mod:`~convertsnn.objectives.ard`,
:mod:`~convertsnn.objectives.rslad`).

The regularizer is for noise training (seed 002: Wu et al., ACM MM 2024).

Randomised smoothing coding costs clean accuracy; RSC recovers part of it by distilling the
pretrained ANN into the noise-coded SNN. The teacher here is the source-ANN view of the SNN
being finetuned, frozen when finetuning starts: the same weights with ReLU, one step, the
direct (noise-free) encoder, i.e. the source ANN with BatchNorm folded
(``SpikingNetwork.gradient("ann")``), with any bias calibration undone. A second finetuning
run (e.g. at a lower T after one at T = 8) names the converted file as ``teacher`` to keep
distilling the original ANN rather than the finetuned weights' ANN view. The term is Hinton et
al.'s (2015) distillation loss at temperature 1::

    D = mean_B KL(softmax(ANN(x)) || softmax(SNN(x)))

on the clean images, the SNN seeing them through its own (noisy) encoder. RSC's temperature and
its additional pre-synaptic feature loss were not retrievable and are not implemented.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import Objective, ObjectiveOutput, kl_divergence, plain_module
from convertsnn.objectives.regularizers import Regularizer, register_regularizer
from convertsnn.snn.encoding import DirectEncoder
from convertsnn.snn.network import SpikingNetwork


def weight_calibration(snn: SpikingNetwork) -> str | None:
    """The calibration that fitted ``snn``'s weights to its spiking neurons and kept no record
    to take them back (``wcal``, or ``readoutcal`` when it refitted the output layer), or None."""
    if "weight_calibration" in snn.metadata:
        return "wcal"
    if snn.metadata.get("readout_calibration", {}).get("chosen", "").startswith("refit"):
        return "readoutcal"
    return None


def take_back_calibration(snn: SpikingNetwork) -> None:
    """Give ``snn`` its source ANN's parameters again, in place: bias calibration's shifts
    (``bias_corrections``) taken back. A file whose weights were calibrated for its spiking
    neurons (:func:`weight_calibration`) keeps no record to take them back from and is
    refused."""
    if method := weight_calibration(snn):
        raise ConvertSNNError(
            f"this SNN's weights were calibrated for its spiking neurons (calibration {method}), "
            f"so its ANN view is not the source ANN; use the file converted without {method} "
            "instead (e.g. as --teacher)"
        )
    for name, shift in snn.metadata.get("bias_corrections", {}).items():
        bias = snn.body.get_submodule(name).bias
        bias.data -= torch.tensor(shift, dtype=bias.dtype, device=bias.device)


def frozen_source_ann(snn: SpikingNetwork) -> SpikingNetwork:
    """A frozen copy of ``snn`` in the ``ann`` gradient mode with the direct encoder, less the
    corrections of calibration (which compensate spiking errors an ANN does not have)."""
    teacher = copy.deepcopy(snn)
    take_back_calibration(teacher)
    teacher.encoder = DirectEncoder()
    teacher.set_gradient("ann")
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def source_teacher(model: nn.Module, teacher: nn.Module | None, user: str) -> SpikingNetwork:
    """The frozen source ANN that ``user`` (e.g. "the distill regularizer") learns from: that
    of ``teacher`` when given, else that of ``model``, which must be a spiking network."""
    snn = plain_module(model)
    if not isinstance(snn, SpikingNetwork):
        raise ConvertSNNError(
            f"{user} distils a source ANN into a spiking network; use it with `convertsnn finetune`"
        )
    return frozen_source_ann(snn if teacher is None else teacher)


class DistillationObjective(Objective):
    """An objective that learns from the frozen source ANN ``self.teacher``.

    ``beta`` (in [0, 1]) weights the adversarial term, ``1 - beta`` the clean one. The source
    must be a converted file that was not finetuned: a finetuned file's ANN view is no longer
    the robust source ANN (pass the converted file as ``teacher``).
    """

    needs_teacher = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= self.beta <= 1:
            raise ConvertSNNError(
                f"objective '{self.name}' weights its adversarial term by beta and its clean "
                f"term by 1 - beta: beta must be in [0, 1], got {self.beta:g}"
            )
        self.teacher: SpikingNetwork | None = None

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        source = plain_module(model) if teacher is None else teacher
        if isinstance(source, SpikingNetwork) and "finetune" in source.metadata:
            which = "the model" if teacher is None else "the teacher file"
            raise ConvertSNNError(
                f"objective '{self.name}' distils the source ANN, but {which} was finetuned "
                "before, so its ANN view is no longer the source ANN; pass the converted SNN "
                "file as --teacher"
            )
        self.teacher = source_teacher(model, teacher, f"objective '{self.name}'")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        if self.teacher is None:
            self.setup(model)
        return super().__call__(model, x, y)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The source ANN's logits on ``x`` (no gradients)."""
        with torch.no_grad():
            return self.teacher(x)


class SourceRegularizer(Regularizer):
    """A regularizer that learns from the frozen source ANN :meth:`source` (set up from
    ``teacher`` when given, else from the model itself)."""

    needs_spiking_network = True
    needs_teacher = True

    def __init__(self, weight: float | None = None) -> None:
        super().__init__(weight)
        self.teacher: SpikingNetwork | None = None

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        self.teacher = source_teacher(model, teacher, f"the {self.name} regularizer")

    def source(self, model: nn.Module) -> SpikingNetwork:
        """The frozen source ANN (that of ``model`` unless :meth:`setup` named a teacher)."""
        if self.teacher is None:
            self.setup(model)
        return self.teacher


@register_regularizer
class SourceDistillation(SourceRegularizer):
    """``mean_B KL(softmax(teacher(x)) || softmax(model(x)))`` with the frozen source ANN."""

    name = "distill"
    default_weight = 1.0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        with torch.no_grad():
            target = self.source(model)(x)
        logits = out.train_logits if out.train_logits is not None else model(x)
        return kl_divergence(target, logits).mean()
