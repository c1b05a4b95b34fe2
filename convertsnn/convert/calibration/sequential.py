"""Run a converted SNN layer by layer over a calibration set, adjusting each spiking layer
before it runs.

Post-conversion methods (seed 001's layer-wise thresholds, SNN Calibration's bias correction)
fix layer ``l`` from the spike trains that the already fixed layers ``1..l-1`` produce. Running
the network once per layer would cost O(layers) forward passes; instead the graph is executed
node by node (a ``torch.fx.Interpreter``) on all calibration images at once, and a callback
sees each neuron's input current just before the neuron runs. One pass in all; memory grows
with ``images x T x`` the largest activation (use fewer images for large T or wide nets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.pooling import SpikingMaxPool2d

# callback(name, neuron, current [T*B, ...]) -> the neuron's output to pass on
NeuronStep = Callable[[str, IFNeuron, torch.Tensor], torch.Tensor]


def calibration_images(loader: DataLoader | None, limit: int) -> torch.Tensor:
    """The first ``limit`` images of ``loader`` as one tensor (on the CPU)."""
    if loader is None:
        raise ConvertSNNError("this calibration needs data: pass calibration images (--calib)")
    chunks, count = [], 0
    for x, _ in loader:
        chunks.append(x[: limit - count])
        count += len(chunks[-1])
        if count >= limit:
            break
    if not count:
        raise ConvertSNNError("the calibration data is empty; pass at least one image")
    return torch.cat(chunks)


class _Interpreter(fx.Interpreter):
    def __init__(
        self,
        gm: fx.GraphModule,
        step: NeuronStep,
        progress: tqdm,
        inputs: dict[str, torch.Tensor] | None,
    ) -> None:
        super().__init__(gm)
        self.step = step
        self.progress = progress
        self.inputs = inputs

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if isinstance(module, IFNeuron):
            out = self.step(target, module, args[0])
            self.progress.update()
            return out
        if self.inputs is not None and target in self.inputs:
            self.inputs[target] = args[0]
        return super().call_module(target, args, kwargs)


def run_layer_by_layer(
    snn: SpikingNetwork,
    images: torch.Tensor,
    timesteps: int,
    step: NeuronStep,
    device: torch.device,
    desc: str = "layer by layer",
    inputs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``snn`` for ``timesteps`` on ``images``, calling ``step`` at every neuron in graph
    order (under ``torch.no_grad``); returns the logits ``[T, B, K]``. ``inputs``: modules whose
    input the steps need; each key's value is set to the module's input ``[T*B, ...]`` when it
    runs (the step may pop it)."""
    if not isinstance(snn.body, fx.GraphModule):
        raise ConvertSNNError("layer-by-layer calibration needs a converted (torch.fx) model")
    temporal = [m for m in snn.body.modules() if isinstance(m, (IFNeuron, SpikingMaxPool2d))]
    for module in temporal:
        module.timesteps = timesteps
    neurons = sum(isinstance(m, IFNeuron) for m in temporal)
    snn.eval().to(device)
    with torch.no_grad(), tqdm(total=neurons, desc=desc, leave=False) as progress:
        seq = snn.encoder(images.to(device), timesteps).flatten(0, 1)
        out = _Interpreter(snn.body, step, progress, inputs).run(seq)
    return out.view(timesteps, len(images), *out.shape[1:])
