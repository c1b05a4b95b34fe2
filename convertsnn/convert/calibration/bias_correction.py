"""Layer-wise bias calibration after conversion (Li et al., ICML 2021, "A free lunch from ANN:
towards efficient, accurate spiking neural networks calibration", the "BC" step).

At low T each spiking layer's mean output drifts from the ANN's (clipped) activation: spikes
arrive unevenly, a few steps cannot resolve small values, and errors pile up layer after layer.
Going through the layers in order, with the earlier ones already corrected, the per-channel
mean error ``e = E[clip(a_ANN, 0, theta)] - E[rate * theta]`` over a few calibration batches is
added to the bias that feeds the layer (its conv/linear, or a kept BatchNorm; through residual
adds, the first summand that has one). The correction is computed for the model's T.

A bias shift moves the mean output only through the neurons that are neither silent nor
saturated, so one step leaves part of the error; here the step is repeated ``iterations`` times
(3) on the layer's stored input current, which costs only re-running that layer's neurons (the
paper takes one step).

Spec: ``biascal`` (on top of ``percentile:99.99``) or ``biascal:BASE`` with any other method as
the base, e.g. ``biascal:qcfs:L=4``. ``images`` (default 256) calibration images are used, all
at once (see :mod:`convertsnn.convert.calibration.sequential` for the memory this needs).
"""

from __future__ import annotations

import operator
import warnings

import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from convertsnn.convert.calibration.composed import OnTopOf
from convertsnn.convert.calibration.registry import register_calibration
from convertsnn.convert.calibration.sequential import calibration_images, run_layer_by_layer
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron

_ADDS = (operator.add, operator.iadd, torch.add)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but 1 (channels / features)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).mean(1) if x.dim() > 1 else x.mean().view(1)


def feeding_layer(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The conv/linear or affine BatchNorm node whose output adds straight into ``node``'s
    value, used only there, found through residual adds; None if there is none."""
    if len(node.users) != 1:
        return None
    if node.op == "call_function" and node.target in _ADDS:
        for arg in node.args:
            if isinstance(arg, fx.Node) and (found := feeding_layer(gm, arg)) is not None:
                return found
        return None
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        return node
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
        return node
    return None


def bias_owner(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The layer whose bias adds straight into ``node``'s value (:func:`feeding_layer`), given
    a zero bias if it has none; None if there is none."""
    found = feeding_layer(gm, node)
    if found is None:
        return None
    module = gm.get_submodule(found.target)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.bias is None:
        module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], device=module.weight.device))
    return module


@register_calibration
class BiasCalibration(OnTopOf):
    """``biascal[:BASE]``: BASE's thresholds, then per-layer bias correction on the SNN."""

    name = "biascal"
    depends_on_timesteps = True
    images = 256
    iterations = 3

    def correct_on_top(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        self.calibrate_biases(snn, loader, device)

    def calibrate_biases(self, snn, loader: DataLoader | None, device: torch.device) -> None:
        """The bias correction alone, for ``snn.timesteps``, on any converted SNN."""
        images = calibration_images(loader, self.images)
        targets = ann_targets(snn, images, device)
        nodes = {n.target: n for n in snn.body.graph.nodes if n.op == "call_module"}
        owner_names = {id(module): name for name, module in snn.body.named_modules()}
        corrections = snn.metadata.setdefault("bias_corrections", {})
        skipped = []

        def correct(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
            owner = bias_owner(snn.body, nodes[name].args[0])
            if owner is None:
                skipped.append(name)
                return neuron(current)
            shape = (1, -1) + (1,) * (current.dim() - 2)
            shift = torch.zeros_like(targets[name])
            out = neuron(current)
            for _ in range(self.iterations):
                shift += targets[name] - channel_mean(out)
                out = neuron(current + shift.view(shape))
            owner.bias.data += shift.to(owner.bias.dtype)
            key = owner_names[id(owner)]
            corrections[key] = (torch.tensor(corrections.get(key, 0.0)) + shift.cpu()).tolist()
            return out

        run_layer_by_layer(snn, images, snn.timesteps, correct, device, desc="bias calibration")
        if skipped:
            warnings.warn(
                f"bias calibration left {len(skipped)} spiking layers uncorrected (no bias feeds "
                f"them): {', '.join(skipped)}",
                stacklevel=2,
            )


def ann_targets(snn, images: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """Per neuron, the per-channel mean of the ANN activation clipped at the threshold."""
    targets: dict[str, torch.Tensor] = {}

    def record(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
        theta = neuron._theta(current.dim())
        targets[name] = channel_mean(torch.minimum(current.clamp(min=0), theta))
        return torch.relu(current)

    if any(isinstance(m, IFNeuron) for m in snn.body.modules()):
        run_layer_by_layer(snn, images, 1, record, device, desc="ANN activations")
    if not targets:
        raise ConvertSNNError("bias calibration found no spiking layers in the model")
    return targets
