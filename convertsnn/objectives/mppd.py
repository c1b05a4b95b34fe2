"""MS-MPPD: the membrane-potential perturbation of the last spiking layer (seed 003, RSSNN).

Ding et al. (ICML 2024, "Robust Stable Spiking Neural Networks", github DingJianhao/stable-snn)
bound how far a perturbation of the input moves an SNN's membrane potentials. Their training
term hooks the input current ``I[t]`` of the last spiking layer in a clean pass and in a
perturbed pass and integrates the difference without reset or spikes::

    e[t] = leak * e[t-1] + (I_clean[t] - I_pert[t]),   e[0] = 0
    V    = mean over t, batch and neurons of e[t]^2

with the clean branch detached (and, for stochastic encoders, both passes drawing the same
noise). As in their code, ``I[t]`` is the current the layer receives (before a DLIF neuron's
gain) and ``leak`` is the neuron's own (0.99 there). Two adaptations to converted models:

- Currents are measured in units of the layer's threshold (``I / theta``, per channel where the
  threshold is): their neurons fire at threshold 1, converted ones at calibrated thresholds of
  5-10 in ANN activation units, which would scale ``V`` by ``theta^2`` (on the converted
  ResNet-2B and 64 RFGSM examples at 2/255: 5.9 in activation units, 0.045 in threshold
  units). A converted layer with output ``theta * spike`` is the same
  network as a threshold-1 layer with its input weights divided by ``theta``, so this is the
  paper's ``V`` of that equivalent network.
- A converted IF neuron has leak 1, where the bound diverges with T, so its difference is
  integrated with leak :data:`IF_LEAK` = 0.99 (the paper's tau).

:class:`MembranePerturbation` (``--regularizer mppd:RHO``) adds ``rho * V`` between the clean
batch and the objective's ``x_adv`` to any objective (two extra forward passes, the clean one
without gradients). The full RSSNN loss, which computes ``V`` inside its own two passes, is the
objective of :mod:`convertsnn.objectives.rssnn`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx, nn

from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.base import ObjectiveOutput, plain_module
from convertsnn.objectives.regularizers import Regularizer, register_regularizer
from convertsnn.snn.encoding import same_noise_next
from convertsnn.snn.neurons import IFNeuron, unfold_time

IF_LEAK = 0.99


def last_spiking_layer(model: nn.Module) -> IFNeuron:
    """The spiking neuron layer that runs last in ``model`` (graph order for converted models)."""
    model = plain_module(model)
    body = getattr(model, "body", model)
    if isinstance(body, fx.GraphModule):
        targets = [n.target for n in body.graph.nodes if n.op == "call_module"]
        neurons = [body.get_submodule(t) for t in targets]
    else:
        neurons = list(body.modules())
    neurons = [m for m in neurons if isinstance(m, IFNeuron)]
    if not neurons:
        raise ConvertSNNError(
            "MS-MPPD needs a spiking network (the membrane of its last spiking layer); "
            "this model has no spiking neurons"
        )
    return neurons[-1]


@contextmanager
def recorded_currents(neuron: IFNeuron) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every call of ``neuron`` appends its input ``[T, B, ...]`` to the
    yielded list (with gradients when the pass has them)."""
    calls: list[torch.Tensor] = []

    def hook(module: IFNeuron, args: tuple) -> None:
        calls.append(unfold_time(args[0], module.timesteps))

    handle = neuron.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def layer_perturbation(neuron: IFNeuron, clean: torch.Tensor, perturbed: torch.Tensor):
    """:func:`membrane_perturbation` of ``neuron``'s recorded currents ``[T, B, ...]``, in units
    of its threshold, integrated with its leak (:data:`IF_LEAK` for IF neurons)."""
    leak = neuron.leak if neuron.leak < 1 else IF_LEAK
    return membrane_perturbation(clean, perturbed, leak, neuron._theta(clean.dim() - 1))


def membrane_perturbation(
    clean: torch.Tensor, perturbed: torch.Tensor, leak: float, threshold: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """``V = mean(e^2)`` for currents ``[T, B, ...]`` in units of ``threshold`` (a scalar or
    broadcastable to ``[B, ...]``), ``e[t] = leak e[t-1] + (clean[t] - pert[t]) / threshold``;
    the clean currents and the threshold are detached."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach()
    diff = (clean.detach() - perturbed) / threshold
    e = torch.zeros_like(diff[0])
    total = diff.new_zeros(())
    for step in diff:
        e = leak * e + step
        total = total + e.pow(2).mean()
    return total / len(diff)


@register_regularizer
class MembranePerturbation(Regularizer):
    """``V`` between ``x`` (detached) and the objective's ``x_adv`` at the last spiking layer;
    the weight is the paper's ``rho`` (1 there)."""

    name = "mppd"
    default_weight = 1.0
    needs_spiking_network = True

    def setup(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """Refuse a model without spiking neurons before training starts."""
        last_spiking_layer(model)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: ObjectiveOutput
    ) -> torch.Tensor:
        neuron = last_spiking_layer(model)
        with recorded_currents(neuron) as calls:
            with torch.no_grad(), same_noise_next(x.device):
                model(x)
            model(out.x_adv)
        return layer_perturbation(neuron, calls[0], calls[1])
