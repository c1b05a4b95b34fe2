"""DLIF: a spiking neuron with a learnable input gain per time step (seed 003, RSSNN).

Ding et al. (ICML 2024, "Robust Stable Spiking Neural Networks", github DingJianhao/stable-snn)
give each spiking layer ``l`` a learnable gain ``p_l`` in R^T on its input current::

    u[t] = leak * u[t-1] + p[t] * I[t]

and otherwise keep the LIF dynamics. Here the rest of the neuron is the converted
:class:`~convertsnn.snn.neurons.IFNeuron` unchanged (its threshold, leak, reset, initial membrane
and surrogate), so a converted model whose neurons become DLIF neurons with all gains 1
computes exactly what it computed before; finetuning then learns the gains with the weights.
(Ding et al. train from scratch with leak 0.99, threshold 1 and hard reset; those are the
converted model's choices here.)

The gains are tied to the number of steps ``T`` they were made for: running the network at
another T is an error. In the ``ann`` gradient mode (the source-ANN proxy, one step) the neuron
is ``ReLU(mean(p) * I)``, the rate-coded equivalent of the gains.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron, unfold_time
from convertsnn.snn.surrogate import Surrogate


class DLIFNeuron(IFNeuron):
    """IF/LIF neuron whose input current at step ``t`` is multiplied by a learnable ``gain[t]``.

    Args:
        threshold, leak, reset, v_init, surrogate, min_threshold, signed, burst, dither,
            population: as :class:`IFNeuron`.
        timesteps: the number of steps T the gains are for (one gain per step, all 1 at first).
    """

    def __init__(
        self,
        threshold: float | torch.Tensor = 1.0,
        timesteps: int = 1,
        leak: float = 1.0,
        reset: str = "subtract",
        v_init: float = 0.5,
        surrogate: str | Surrogate = "triangle:1",
        min_threshold: float = 1e-3,
        signed: bool = False,
        burst: int = 1,
        dither: float = 0.0,
        population: int = 1,
    ) -> None:
        super().__init__(
            threshold, leak, reset, v_init, surrogate, min_threshold, signed, burst, dither,
            population,
        )  # fmt: skip
        if int(timesteps) != timesteps or timesteps < 1:
            raise ConvertSNNError(f"DLIF neuron needs timesteps >= 1, got {timesteps}")
        self.gain = nn.Parameter(torch.ones(int(timesteps)))

    @classmethod
    def from_neuron(cls, neuron: IFNeuron, timesteps: int) -> DLIFNeuron:
        """A DLIF neuron with ``neuron``'s threshold and settings and all gains 1."""
        config = neuron.config()
        dlif = cls(neuron.threshold.detach().clone(), timesteps, **config)
        dlif.surrogate = neuron.surrogate
        dlif.gradient_mode = neuron.gradient_mode
        return dlif.to(neuron.threshold.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, timesteps={self.gain.numel()}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: input currents ``[T*B, ...]``; returns ``theta * spikes`` of the gained input."""
        if self.gradient_mode == "ann":
            return torch.relu(self.gain.mean() * x)
        steps = self.gain.numel()
        if self.timesteps != steps:
            raise ConvertSNNError(
                f"this DLIF neuron has input gains for T={steps} but runs at T={self.timesteps}; "
                f"run the model at T={steps}"
            )
        gain = self.gain.view(steps, 1, *([1] * (x.dim() - 1)))
        return super().forward((gain * unfold_time(x, steps)).flatten(0, 1))


def to_dlif(snn: nn.Module) -> int:
    """Replace every plain :class:`IFNeuron` of ``snn.body`` by a :class:`DLIFNeuron` for
    ``snn.timesteps`` steps with all gains 1 (the output does not change); returns how many."""
    body = snn.body
    replaced = 0
    for name, module in list(body.named_modules()):
        if type(module) is not IFNeuron:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, leaf, DLIFNeuron.from_neuron(module, snn.timesteps))
        replaced += 1
    return replaced
