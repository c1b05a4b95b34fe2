"""Hidden-layer distillation on adversarial inputs: every spiking layer's time-averaged output
matches the source ANN's activation at the objective's adversarial images.

Converted SNNs lose robustness in step with the conversion error of their hidden layers, and
an input change of size eps reshuffles that rounding error (docs/robustness_loss.md). Output
distillation (``distill``, RSLAD, ARD) pulls the logits towards the source ANN's; this term
pulls every spiking layer ``l`` towards it, on the perturbed points where the rounding error
decides the class: a hint loss (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep
Nets") per layer, the SNN as student, its frozen source ANN as teacher::

    H = mean_l ||r_l(x') - a_l(x')||^2 / ||a_l(x')||^2

``r_l``: the layer's output averaged over the T steps (firing rate x threshold, with
gradients through the surrogate), ``a_l``: the source ANN's activation
(:func:`~convertsnn.objectives.distill.frozen_source_ann`), ``x'``: the objective's
adversarial batch; squared norms over the whole batch, so each layer counts by its relative
error whatever its scale. One extra SNN forward and backward pass per step.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.eval.perturbation import time_averaged_outputs
from convertsnn.objectives.base import ObjectiveOutput, plain_module
from convertsnn.objectives.distill import SourceRegularizer
from convertsnn.objectives.regularizers import register_regularizer


@register_regularizer
class LayerDistillation(SourceRegularizer):
    """``H`` above between the SNN and its frozen source ANN at ``out.x_adv``."""

    name = "layer-distill"
    default_weight = 1.0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        teacher = self.source(model)
        snn = plain_module(model)
        layers = list(snn.thresholds)
        images = out.x_adv
        with torch.no_grad(), time_averaged_outputs(teacher, layers, len(images)) as target:
            teacher(images)
        with time_averaged_outputs(snn, layers, len(images), detach=False) as rates:
            model(images)
        errors = [
            (rates[name] - target[name]).square().sum()
            / target[name].square().sum().clamp_min(1e-12)
            for name in layers
        ]
        return torch.stack(errors).mean()
