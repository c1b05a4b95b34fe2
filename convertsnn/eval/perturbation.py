"""Where an adversarial perturbation grows: per spiking layer, the SNN next to its source ANN.

For clean images ``x`` and adversarial images ``x'`` (same order), at every spiking layer ``l``
(the neuron that replaced the ANN's activation ``l``)::

    snn_l          = ||r_l(x') - r_l(x)|| / ||r_l(x)||   r_l: the layer's output averaged over
                                                        the T steps (firing rate x theta)
    ann_l          = ||a_l(x') - a_l(x)|| / ||a_l(x)||   a_l: the source ANN's activation
    quantisation_l = ||r_l(x) - a_l(x)|| / ||a_l(x)||    conversion error on the clean images

with Frobenius norms over the whole batch (an image whose layer is silent does not divide by
zero). A last row, ``logits``, compares the networks' outputs. ``growth = snn / ann`` above 1
means the SNN's perturbation at that layer is larger than the ANN's: the layers where it jumps
are where the spiking network loses the ANN's robustness (Ding et al., NeurIPS 2022,
"SNN-RAT", regularise the spiking layers' Lipschitz constants so that perturbations do not
grow; here the growth is measured, layer by layer).

The source ANN is by default the SNN's own ``ann`` view with bias calibration undone
(:func:`~convertsnn.objectives.distill.frozen_source_ann`); a converted SNN file (the ``ann``
view of another SNN of the same ANN) or the ANN itself (an ``nn.Module`` taking images in
[0, 1]; its activations are matched by name after :func:`~convertsnn.convert.prepare_ann`) can
be passed instead. With a random encoder (Poisson, Gaussian) ``r(x')`` and ``r(x)`` come from
different draws, so ``snn`` also counts the encoder's noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from convertsnn.convert.graph import activation_names, prepare_ann
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives.distill import frozen_source_ann
from convertsnn.snn.network import SpikingNetwork

LOGITS = "logits"


@dataclass
class LayerPerturbation:
    """One layer's relative perturbations (SNN, ANN) and the clean conversion error."""

    layer: str
    snn: float
    ann: float
    quantisation: float

    @property
    def growth(self) -> float:
        """How much larger the SNN's relative perturbation is than the ANN's (NaN where
        neither moved, infinity where only the SNN did)."""
        if self.ann > 0:
            return self.snn / self.ann
        return math.nan if self.snn == 0 else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "growth": self.growth}


@contextmanager
def time_averaged_outputs(
    model: nn.Module, layers: list[str], batch: int, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward pass of ``model`` (a :class:`SpikingNetwork` or a graph
    module) leaves in the yielded dict, per layer name, that layer's output averaged over time,
    ``[batch, ...]`` (time is folded into the batch, ``[T*batch, ...]``; an ANN has T = 1),
    detached unless ``detach`` is False."""
    outputs: dict[str, torch.Tensor] = {}
    root = model.body if isinstance(model, SpikingNetwork) else model

    def keep(name: str):
        def hook(_module, _inputs, out: torch.Tensor) -> None:
            out = out.detach() if detach else out
            outputs[name] = out.reshape(-1, batch, *out.shape[1:]).mean(0)

        return hook

    handles = [root.get_submodule(name).register_forward_hook(keep(name)) for name in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def source_ann(snn: SpikingNetwork, ann: nn.Module | None = None) -> nn.Module:
    """The network to compare ``snn`` with, whose activations carry the SNN's neuron names."""
    if ann is None or isinstance(ann, SpikingNetwork):
        return frozen_source_ann(snn if ann is None else ann)
    graph = prepare_ann(ann).to(next(snn.parameters()).device).eval()
    missing = sorted(set(snn.thresholds) - set(activation_names(graph)))
    if missing:
        raise ConvertSNNError(
            f"the ANN has no activation named {', '.join(missing[:3])} (the SNN's spiking "
            "layers): pass the ANN this SNN was converted from"
        )
    return graph


def layer_perturbations(
    snn: SpikingNetwork,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    ann: nn.Module | None = None,
    batch_size: int = 128,
) -> list[LayerPerturbation]:
    """Per spiking layer (in graph order), then for the logits: the relative perturbation of
    the SNN's time-averaged output and of the source ANN's activation between ``x`` and
    ``x_adv``, and the SNN's relative error against the ANN on ``x`` (see the module doc).

    ``x``, ``x_adv``: ``[N, C, H, W]`` images in [0, 1], ``x_adv[i]`` the adversarial version of
    ``x[i]``. ``ann``: the source ANN (default: the SNN's ``ann`` view, bias calibration undone).
    """
    if x.shape != x_adv.shape or not len(x):
        raise ConvertSNNError(
            f"clean and adversarial images must be non-empty batches of the same shape, got "
            f"{tuple(x.shape)} and {tuple(x_adv.shape)}"
        )
    layers = list(snn.thresholds)
    reference = source_ann(snn, ann)
    device = next(snn.parameters()).device
    names = [*layers, LOGITS]
    sums = {name: torch.zeros(5, dtype=torch.float64) for name in names}
    snn.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            clean = x[start : start + batch_size].to(device)
            adv = x_adv[start : start + batch_size].to(device)
            runs = {}
            for key, model in (("snn", snn), ("ann", reference)):
                for which, images in (("clean", clean), ("adv", adv)):
                    with time_averaged_outputs(model, layers, len(images)) as outputs:
                        logits = model(images)
                    runs[key, which] = {**outputs, LOGITS: logits}
            for name in names:
                r, r_adv = runs["snn", "clean"][name], runs["snn", "adv"][name]
                a, a_adv = runs["ann", "clean"][name], runs["ann", "adv"][name]
                sums[name] += torch.stack(
                    [squared_norm(v) for v in (r_adv - r, r, a_adv - a, a, r - a)]
                ).cpu()
    return [
        LayerPerturbation(
            name,
            snn=ratio(s[0], s[1]),
            ann=ratio(s[2], s[3]),
            quantisation=ratio(s[4], s[3]),
        )
        for name, s in sums.items()
    ]


def squared_norm(value: torch.Tensor) -> torch.Tensor:
    return value.double().square().sum()


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    """``sqrt(numerator / denominator)`` (ratio of norms from squared norms); NaN for 0 / 0,
    infinity for a change of a layer that was silent."""
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return math.sqrt(float(numerator / denominator))
