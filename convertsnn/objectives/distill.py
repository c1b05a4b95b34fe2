"""Distillation from the source ANN, for noise training (seed 002: Wu et al., ACM MM 2024).

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
from convertsnn.objectives.base import ObjectiveOutput, kl_divergence, plain_module
from convertsnn.objectives.regularizers import Regularizer, register_regularizer
from convertsnn.snn.encoding import DirectEncoder
from convertsnn.snn.network import SpikingNetwork


def frozen_source_ann(snn: SpikingNetwork) -> SpikingNetwork:
    """A frozen copy of ``snn`` in the ``ann`` gradient mode with the direct encoder, less the
    bias corrections of bias calibration (which compensate spiking errors an ANN does not have)."""
    teacher = copy.deepcopy(snn)
    for name, shift in snn.metadata.get("bias_corrections", {}).items():
        bias = teacher.body.get_submodule(name).bias
        bias.data -= torch.tensor(shift, dtype=bias.dtype, device=bias.device)
    teacher.encoder = DirectEncoder()
    teacher.set_gradient("ann")
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@register_regularizer
class SourceDistillation(Regularizer):
    """``mean_B KL(softmax(teacher(x)) || softmax(model(x)))`` with the frozen source ANN."""

    name = "distill"
    default_weight = 1.0
    needs_spiking_network = True

    def __init__(self, weight: float | None = None) -> None:
        super().__init__(weight)
        self.teacher: SpikingNetwork | None = None

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        snn = plain_module(model)
        if not isinstance(snn, SpikingNetwork):
            raise ConvertSNNError(
                "the distill regularizer distils a source ANN into a spiking network; "
                "use it with `convertsnn finetune`"
            )
        self.teacher = frozen_source_ann(snn if teacher is None else teacher)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        if self.teacher is None:
            self.setup(model)
        with torch.no_grad():
            target = self.teacher(x)
        logits = out.train_logits if out.train_logits is not None else model(x)
        return kl_divergence(target, logits).mean()
