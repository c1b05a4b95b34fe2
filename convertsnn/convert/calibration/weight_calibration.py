"""Layer-wise weight calibration after conversion (Li et al., ICML 2021, "A free lunch from ANN:
towards efficient, accurate spiking neural networks calibration", the advanced pipeline's weight
calibration).

Bias calibration moves each channel's mean output; the error left is per neuron: a neuron of a
deep layer sees its inputs as spike trains of a few levels, not as the ANN's activations, and
its rate drifts from the ANN's value by a pattern that a bias cannot follow. Going through the
spiking layers in order, with the earlier ones already calibrated, the weights and bias of the
conv/linear layer that feeds each one (through residual adds, the first summand that has one)
are changed to bring the layer's T-step output ``theta * rate`` closer, in mean squared error,
to the ANN's activation clipped at the threshold, on ``images`` calibration images whose inputs
are the spike trains of the calibrated layers before it. Only that layer's parameters change,
by Adam on random batches of the images; the loss's gradient passes from the rate to the mean
input current straight through (the rate of an IF neuron is its mean current, rounded and
clipped to ``[0, theta]``), so each step runs the neurons forward once and backpropagates
through one convolution on the time-averaged input. No labels are used and nothing is trained
end to end: each layer's correction is a local least-squares fit, like the threshold and bias
steps, at the cost of a few hundred small optimisation steps per layer.

The ANN targets are recorded before BASE's own correction (bias calibration changes the biases
the targets would be computed with). Layers fed by something else (a max pool, a kept BatchNorm
without a conv) keep their parameters and are named in a warning.

Spec: ``wcal`` (on top of ``biascal:mse``) or ``wcal:BASE`` with any other method as the base,
e.g. ``delay:wcal:biascal:mse:channel=1,scale=0.7`` (per-channel thresholds: the best one-neuron
method measured, docs/conversion.md). Memory: the ANN activations of every layer for ``images``
(512) images, plus the inputs and currents of one layer for ``images x T``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.bias_correction import feeding_layer
from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.offset import clipped_activations
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.convert.calibration.sequential import calibration_images, run_layer_by_layer
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron


def layer_delta(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """What ``module`` adds to its output when its weight and bias change by ``weight`` and
    ``bias`` (a conv or linear layer is linear in its parameters)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    return conv(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


@register_calibration
class WeightCalibration(OnTopOf):
    """``wcal[:BASE]``: BASE's SNN, then each spiking layer's feeding weights fitted layer by
    layer to the ANN's clipped activations."""

    name = "wcal"
    default_base = "biascal:mse"
    depends_on_timesteps = True
    images = 512
    steps = 200
    batch = 32
    lr = 1e-3  # Adam step, relative to the layer's mean absolute weight
    seed = 0

    def correct_snn(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        if any(neuron.burst > 1 for neuron in snn.neurons()):
            raise ConvertSNNError(
                "weight calibration fits outputs in [0, theta], but burst neurons reach K theta; "
                "choose a calibration without wcal for --burst"
            )
        images = calibration_images(loader, self.images)
        targets = clipped_activations(snn, images, device)
        self.base.correct_snn(snn, self.base_loader(loader), device)
        self.calibrate_weights(snn, images, targets, device)

    def calibrate_weights(
        self,
        snn,
        images: torch.Tensor,
        targets: dict[str, torch.Tensor],
        device: torch.device,
    ) -> None:
        """Fit each spiking layer's feeding conv/linear, in graph order, for ``snn.timesteps``,
        to ``targets`` (per neuron, the ANN's clipped activation on ``images``)."""
        graph_nodes = {n.target: n for n in snn.body.graph.nodes if n.op == "call_module"}
        feeders = {}
        for name, node in graph_nodes.items():
            if isinstance(snn.body.get_submodule(name), IFNeuron):
                found = feeding_layer(snn.body, node.args[0])
                if found is not None and isinstance(
                    snn.body.get_submodule(found.target), (nn.Conv1d, nn.Conv2d, nn.Linear)
                ):
                    feeders[name] = found.target
        inputs: dict[str, torch.Tensor] = dict.fromkeys(feeders.values())
        generator = torch.Generator().manual_seed(self.seed)
        changes = snn.metadata.setdefault("weight_calibration", {})
        skipped = []

        def fit(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
            target = targets.pop(name)
            if name not in feeders:
                skipped.append(name)
                return neuron(current)
            module = snn.body.get_submodule(feeders[name])
            x = inputs.pop(feeders[name])  # kept no longer than needed
            weight, bias, before, after = self.fit_layer(
                neuron, module, x, current, target, generator
            )
            changes[name] = {"layer": feeders[name], "mse_before": before, "mse_after": after}
            return neuron(current + layer_delta(module, x, weight, bias))

        run_layer_by_layer(
            snn, images, snn.timesteps, fit, device, desc="weight calibration", inputs=inputs
        )
        if skipped:
            warnings.warn(
                f"weight calibration left {len(skipped)} spiking layers unchanged (no conv or "
                f"linear layer feeds them): {', '.join(skipped)}",
                stacklevel=2,
            )

    def fit_layer(
        self,
        neuron: IFNeuron,
        module: nn.Module,
        x: torch.Tensor,
        current: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """Adam on ``module``'s weight and bias changes; applies them to ``module`` and returns
        them with the mean squared error before and after (all images)."""
        steps = neuron.timesteps
        count = len(target)
        xs = x.view(steps, count, *x.shape[1:])
        currents = current.view(steps, count, *current.shape[1:])
        target = target.to(x.device)  # once, not per step
        theta = neuron._theta(current.dim()).detach()
        weight = torch.zeros_like(module.weight, requires_grad=True)
        bias = torch.zeros(module.weight.shape[0], device=x.device, requires_grad=True)
        scale = module.weight.detach().abs().mean().item()
        optimiser = torch.optim.Adam([weight, bias], lr=self.lr * scale)

        def error(pick: torch.Tensor) -> torch.Tensor:
            x_pick = xs[:, pick]
            with torch.no_grad():
                shift = layer_delta(module, x_pick.flatten(0, 1), weight, bias)
                out = neuron(currents[:, pick].flatten(0, 1) + shift)
                rate = out.view(steps, len(pick), *out.shape[1:]).mean(0)
            mean_current = currents[:, pick].mean(0) + layer_delta(
                module, x_pick.mean(0), weight, bias
            )
            proxy = torch.minimum(mean_current.clamp(min=0), theta)
            estimate = rate + proxy - proxy.detach()
            return (estimate - target[pick]).pow(2).mean()

        everything = torch.arange(count)
        with torch.no_grad():
            before = error(everything).item()
        with torch.enable_grad():
            for _ in range(self.steps):
                pick = torch.randint(count, (min(self.batch, count),), generator=generator)
                optimiser.zero_grad()
                error(pick).backward()
                optimiser.step()
        with torch.no_grad():
            after = error(everything).item()
            if after >= before:  # the fit did not help on the whole set: keep the layer as it was
                weight.zero_()
                bias.zero_()
                after = before
            module.weight += weight
            if module.bias is None:
                module.bias = nn.Parameter(bias.detach().clone())
            else:
                module.bias += bias
        return weight.detach(), bias.detach(), before, after
