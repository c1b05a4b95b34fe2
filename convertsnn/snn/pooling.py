"""Spiking max-pooling: pass on the input with the most spikes so far.

Taking the max of spike trains step by step (``F.max_pool2d`` on ``theta * spikes``) outputs a
spike whenever any input of the window spikes, so the output rate is the rate of the OR of the
inputs, well above the max of the rates: it overestimates the ANN's max-pool, worst at low T
where spike timing is coarse.

:class:`SpikingMaxPool2d` gates the window instead (Rueckauer et al. 2017, "Conversion of
continuous-valued deep networks to efficient event-driven networks", section 2.2.2): at each step
it outputs the current input of the window position whose running sum of inputs (its spike count
times theta) is largest, ties going to the first position. Its output rate converges to the rate
of the most active input, i.e. to the max-pool of the rates. On analog inputs (e.g. a max-pool
right after the first conv under direct coding) the running sums rank the positions by their
mean, so a constant input gives exactly the ANN's max-pool.

Shapes as for :class:`~convertsnn.snn.neurons.IFNeuron`: input ``[T*B, C, H, W]`` time-major,
``T = self.timesteps`` (set by :class:`~convertsnn.snn.network.SpikingNetwork`); with ``T = 1``
(the ANN proxy) it is a plain max-pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.snn.neurons import unfold_time


class SpikingMaxPool2d(nn.Module):
    """Max-pooling over the running spike count (see the module doc); same arguments as
    :class:`torch.nn.MaxPool2d`."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.timesteps = 1

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )

    def _pool(self, x: torch.Tensor, return_indices: bool = False):
        return F.max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=return_indices,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[T*B, C, H, W]``; returns the gated inputs ``[T*B, C, H', W']``."""
        steps = self.timesteps
        if steps == 1:
            return self._pool(x)
        running = unfold_time(x, steps, "spiking max-pool").cumsum(0).flatten(0, 1)
        # Padding positions hold -inf in max_pool2d, so they are never selected.
        _, index = self._pool(running.detach(), return_indices=True)
        picked = x.flatten(2).gather(2, index.flatten(2))
        return picked.view(index.shape)
