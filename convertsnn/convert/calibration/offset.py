"""Initial-membrane (offset-spike) calibration, layer by layer (after Hao et al., ICLR 2023,
"Bridging the gap between ANNs and SNNs by calibrating offset spikes").

At low T most of a converted layer's error is one spike too many or too few per neuron (an
"offset spike"): the spike count of a neuron over T steps differs from ``T * a / theta`` of its
ANN activation ``a`` by +-1. Hao et al. show that shifting the initial membrane potential adds
or removes exactly such a spike, and that the shift can be applied layer after layer, each layer
calibrated on the spike trains of the already calibrated ones (the method's iterative property).

Here every spiking layer, in order, gets the initial membrane ``v_init * theta`` (``v_init`` on
a grid of 0, 1/8, ..., 1) whose T-step output ``theta * rate`` is closest (mean squared error
over all neurons of ``images`` calibration images) to the ANN's activation clipped at the
threshold, with the earlier layers already shifted. One ``v_init`` per layer, because the SNN
file stores one per neuron layer; the paper shifts per neuron. The chosen values are recorded in
the file's metadata (``initial_membrane``).

Spec: ``offset`` (on top of ``mse``) or ``offset:BASE`` with any other method as the base, e.g.
``offset:biascal:mse``. Memory: the ANN activations of every layer for ``images`` (128) images,
plus ``images x T`` of the largest layer (see :mod:`convertsnn.convert.calibration.sequential`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.bias_correction import channel_mean
from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.convert.calibration.sequential import calibration_images, run_layer_by_layer
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron

V_INIT_GRID = tuple(i / 8 for i in range(9))


@register_calibration
class OffsetSpikes(OnTopOf):
    """``offset[:BASE]``: BASE's thresholds, then the per-layer initial membrane for T."""

    name = "offset"
    default_base = "mse"
    depends_on_timesteps = True
    images = 128

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        self.calibrate_offsets(snn, loader, device)

    def calibrate_offsets(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        """The initial-membrane search alone, for ``snn.timesteps``, on any converted SNN
        without populations (whose members start at fixed fractions of theta)."""
        if any(neuron.population > 1 for neuron in snn.neurons()):
            raise ConvertSNNError(
                "offset calibration moves each layer's initial membrane, but population members "
                "start at fixed (k + 1/2) / K theta; choose a calibration without offset"
            )
        images = calibration_images(loader, self.images)
        targets = clipped_activations(snn, images, device)
        steps = snn.timesteps
        chosen = snn.metadata.setdefault("initial_membrane", {})

        def shift(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
            target = targets.pop(name).to(current.device)
            best, best_error, best_out = neuron.v_init, float("inf"), None
            for v_init in V_INIT_GRID:
                neuron.v_init = v_init
                out = neuron(current)
                rate = out.view(steps, -1, *out.shape[1:]).mean(0)
                error = offset_error(rate, target)
                if error < best_error:
                    best, best_error, best_out = v_init, error, out
            neuron.v_init = best
            chosen[name] = best
            return best_out

        run_layer_by_layer(snn, images, steps, shift, device, desc="initial membrane")


def offset_error(rate: torch.Tensor, target: torch.Tensor) -> float:
    """Squared error of the per-channel mean output (the systematic part of the offset)."""
    return (channel_mean(rate) - channel_mean(target)).pow(2).mean().item()


def clipped_activations(snn, images: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """Per neuron, the ANN activation clipped at the threshold, ``[B, ...]`` (on the CPU)."""
    found: dict[str, torch.Tensor] = {}

    def record(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
        found[name] = torch.minimum(current.clamp(min=0), neuron._theta(current.dim())).cpu()
        return torch.relu(current)

    run_layer_by_layer(snn, images, 1, record, device, desc="ANN activations")
    if not found:
        raise ConvertSNNError("offset calibration found no spiking layers in the model")
    return found
