"""The spiking network: encoder, time-folded body, mean readout.

Shapes::

    x        [B, C, H, W]        images in [0, 1] (normalisation is inside the body)
    encoder  [T, B, C, H, W]     direct / Poisson / Gaussian coding
    body     [T*B, C, H, W] -> [T*B, K]
             stateless layers (conv, linear, pooling, adds) see time as batch; every IFNeuron
             unfolds [T, B, ...], integrates over time and folds back
    readout  [T, B, K] -> mean over T (or over steps D..T-1) -> [B, K]

The last layer of the body is non-spiking, so the readout is the mean of its outputs over time
(equal to the last layer applied to the mean firing rate). ``readout="delay:D"`` averages only
steps ``D..T-1``: the delayed evaluation of Bu, Li and Yu (CVPR 2025, "Inference-scale
complexity in ANN-SNN conversion for high-performance and low-power applications"), which skips
the steps before the first spikes have crossed the network.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError, InputRangeWarning
from convertsnn.snn.checkpointing import checkpointed_body
from convertsnn.snn.compiled import check_runtime
from convertsnn.snn.encoding import Encoder, parse_encoder
from convertsnn.snn.neurons import GRADIENT_MODES, IFNeuron, check_dither
from convertsnn.snn.pooling import SpikingMaxPool2d
from convertsnn.snn.surrogate import Surrogate, parse_surrogate

MAX_TIMESTEPS = 4096  # beyond the longest simulations in the conversion literature
INPUT_TOLERANCE = 1e-4  # float rounding allowed outside [0, 1]
UNSCALED_LIMIT = 10.0  # beyond this no image in [0, 1], even with noise added, can reach


def check_timesteps(value: int, what: str = "timesteps") -> int:
    """``value`` as the number of simulation steps T, refused unless 1 <= T <= MAX_TIMESTEPS."""
    try:
        valid = not isinstance(value, bool) and int(value) == value and 1 <= value <= MAX_TIMESTEPS
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConvertSNNError(f"{what} must be an integer from 1 to {MAX_TIMESTEPS}, got {value}")
    return int(value)


def read_out(sequence: torch.Tensor, delay: int) -> torch.Tensor:
    """Logits ``[T, B, K]`` -> ``[B, K]``: their mean over the steps ``delay..T-1``."""
    if delay >= len(sequence):
        raise ConvertSNNError(
            f"the readout skips the first {delay} steps (delay:{delay}) but the SNN runs "
            f"{len(sequence)}; run it for more than {delay} steps or set readout to mean"
        )
    return sequence[delay:].mean(0)


MEMORY_MODES = ("full", "checkpoint")
LAYOUTS = ("nchw", "channels_last")


def parse_readout(readout: str) -> int:
    """The number of first steps that ``readout`` skips: 0 for ``"mean"``, D for ``"delay:D"``."""
    name, sep, value = str(readout).partition(":")
    if readout == "mean":
        return 0
    if name == "delay" and sep and value.strip().isdigit():
        return int(value)
    raise ConvertSNNError(
        f"unknown readout '{readout}'; use mean or delay:D (average the logits of steps D..T-1)"
    )


class SpikingNetwork(nn.Module):
    """A converted SNN that runs ``timesteps`` steps and averages its logits over time.

    Args:
        body: module mapping ``[T*B, ...]`` to ``[T*B, K]`` (usually a ``torch.fx.GraphModule``
            whose ReLUs were replaced by :class:`IFNeuron`).
        timesteps: number of simulation steps T.
        encoder: input coding, ``"direct"`` by default.
        metadata: JSON-serialisable facts that travel with the model (source, preprocessing,
            input size, calibration, history).
        readout: ``"mean"`` (the logits averaged over all T steps) or ``"delay:D"`` (averaged
            over steps ``D..T-1``, Bu et al.'s delayed evaluation; needs T > D).
    """

    def __init__(
        self,
        body: nn.Module,
        timesteps: int,
        encoder: str | Encoder = "direct",
        metadata: dict | None = None,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        self.body = body
        self.encoder = parse_encoder(encoder)
        self.metadata = dict(metadata or {})
        self.timesteps = timesteps
        self.readout = readout
        self.__dict__["_checkpointed"] = None  # not a submodule: it shares the body's modules

    @property
    def timesteps(self) -> int:
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: int) -> None:
        self._timesteps = check_timesteps(value)

    @property
    def readout(self) -> str:
        return self._readout

    @readout.setter
    def readout(self, value: str) -> None:
        delay = parse_readout(value)
        self._readout = "mean" if value == "mean" else f"delay:{delay}"

    @property
    def readout_delay(self) -> int:
        """Steps skipped by the readout (0 unless ``readout`` is ``"delay:D"``)."""
        return parse_readout(self._readout)

    def neurons(self) -> Iterator[IFNeuron]:
        """All spiking neurons of the body, in module order."""
        return (m for m in self.body.modules() if isinstance(m, IFNeuron))

    @property
    def randomness(self) -> str:
        """What makes the output random ("" when nothing does): a random input encoder
        (Poisson, Gaussian) and/or neurons with a dithered initial membrane."""
        parts = [f"the {self.encoder} encoder"] if self.encoder.stochastic else []
        dithers = sorted({n.dither for n in self.neurons() if n.dither})
        if dithers:
            values = ", ".join(f"{d:g}" for d in dithers)
            parts.append(f"the dithered initial membrane of its neurons (dither {values})")
        return " and ".join(parts)

    @property
    def stochastic(self) -> bool:
        """True when two forward passes on the same input may differ (evaluate with EOT)."""
        return bool(self.randomness)

    def set_dither(self, dither: float) -> None:
        """Give every neuron a random initial membrane ``theta * U[v_init - dither, v_init +
        dither]`` per input (0: off; see :class:`IFNeuron`). Checked for every neuron before
        any changes, so a refused value leaves the model as it was."""
        neurons = list(self.neurons())
        values = [check_dither(dither, neuron.v_init) for neuron in neurons]
        for neuron, value in zip(neurons, values, strict=True):
            neuron.dither = value

    @property
    def input_size(self) -> tuple[int, ...] | None:
        size = self.metadata.get("input_size")
        return tuple(size) if size else None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line error if ``x`` is not a batch of images of the model's size.

        For a model with a known input size (every converted model), NaN and values beyond
        +-``UNSCALED_LIMIT`` (pixels in [0, 255]) are refused; other values outside [0, 1]
        (normalised images, or noise added on purpose as in randomised smoothing) give one
        :class:`InputRangeWarning` per model.
        """
        if not isinstance(x, torch.Tensor):
            raise ConvertSNNError(f"the SNN takes a tensor of images, got {type(x).__name__}")
        expected = self.input_size
        if expected and tuple(x.shape[1:]) != expected:
            unbatched = " (add the batch dimension: x.unsqueeze(0))" if x.shape == expected else ""
            raise ConvertSNNError(
                f"input of shape {tuple(x.shape)} does not match the model's input size "
                f"[B, {', '.join(map(str, expected))}]{unbatched}; resize the images or use "
                "matching data"
            )
        if (
            not expected
            and x.ndim == 3
            and any(isinstance(m, nn.Conv2d) for m in self.body.modules())
        ):
            raise ConvertSNNError(
                f"input of shape {tuple(x.shape)} is not a batch of images [B, C, H, W]; add the "
                "batch dimension: x.unsqueeze(0)"
            )
        if expected and x.numel():
            low, high = (v.item() for v in torch.aminmax(x.detach()))
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ConvertSNNError("input images contain NaN or infinite values")
            if not -UNSCALED_LIMIT <= low <= high <= UNSCALED_LIMIT:
                raise ConvertSNNError(
                    f"input values span [{low:.4g}, {high:.4g}] but the SNN takes images in "
                    "[0, 1] (normalisation is inside the model); divide uint8 images by 255"
                )
            outside = low < -INPUT_TOLERANCE or high > 1 + INPUT_TOLERANCE
            if outside and not getattr(self, "_input_range_warned", False):
                self._input_range_warned = True
                warnings.warn(
                    f"input values span [{low:.4g}, {high:.4g}]; the SNN takes images in [0, 1] "
                    "(normalisation is inside the model): expected only for noisy inputs",
                    InputRangeWarning,
                    stacklevel=3,
                )

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at every step, ``[T, B, K]``."""
        self.check_input(x)
        steps = 1 if self.gradient_mode == "ann" else self.timesteps
        for module in self.body.modules():
            if isinstance(module, (IFNeuron, SpikingMaxPool2d)):
                module.timesteps = steps
        seq = self.encoder(x, steps)
        checkpointed = self.__dict__["_checkpointed"]
        body = checkpointed if checkpointed is not None and torch.is_grad_enabled() else self.body
        out = body(seq.flatten(0, 1))
        return out.view(steps, x.shape[0], *out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits over time (over steps ``D..T-1`` with ``readout="delay:D"``), ``[B, K]``;
        the ``ann`` gradient mode runs one step and reads it."""
        delay = 0 if self.gradient_mode == "ann" else self.readout_delay
        return read_out(self.forward_sequence(x), delay)

    @property
    def memory(self) -> str:
        """``"full"``: a BPTT pass keeps every activation; ``"checkpoint"``: segments of about
        sqrt(N) spiking layers keep only their inputs and are recomputed in the backward pass (see
        :mod:`convertsnn.snn.checkpointing`). Set it again after replacing body modules."""
        return "full" if self.__dict__["_checkpointed"] is None else "checkpoint"

    @memory.setter
    def memory(self, value: str) -> None:
        if value not in MEMORY_MODES:
            raise ConvertSNNError(
                f"unknown memory mode '{value}'; choose one of {', '.join(MEMORY_MODES)}"
            )
        self.__dict__["_checkpointed"] = (
            checkpointed_body(self.body) if value == "checkpoint" else None
        )

    @property
    def runtime(self) -> str:
        """``"eager"`` (default) or ``"compiled"``: how the neurons run their dynamics (see
        :mod:`convertsnn.snn.compiled`); an execution choice, not saved in the file."""
        runtimes = {n.runtime for n in self.neurons()}
        return runtimes.pop() if len(runtimes) == 1 else "eager"

    @runtime.setter
    def runtime(self, value: str) -> None:
        check_runtime(value)
        for neuron in self.neurons():
            neuron.runtime = value

    @property
    def layout(self) -> str:
        """``"nchw"`` (torch's default) or ``"channels_last"``: the memory layout of the
        convolution weights, which the feature maps follow. On CPU ``channels_last`` ran the
        compiled ResNet-20 SNN about 1.15x faster and a ResNet-2B population no faster
        (docs/performance.md); convolutions then add in another order, so a membrane may land
        on the other side of a threshold now and then. An execution choice, not saved in the
        file."""
        channels_last = any(
            w.dim() == 4
            and w.is_contiguous(memory_format=torch.channels_last)
            and not w.is_contiguous()
            for w in self.body.parameters()
        )
        return "channels_last" if channels_last else "nchw"

    @layout.setter
    def layout(self, value: str) -> None:
        if value not in LAYOUTS:
            raise ConvertSNNError(f"unknown layout '{value}'; choose one of {', '.join(LAYOUTS)}")
        fmt = torch.channels_last if value == "channels_last" else torch.contiguous_format
        self.to(memory_format=fmt)

    @property
    def gradient_mode(self) -> str:
        modes = {n.gradient_mode for n in self.neurons()}
        return modes.pop() if len(modes) == 1 else "bptt"

    def set_gradient(self, mode: str = "bptt", surrogate: str | Surrogate | None = None) -> None:
        """Set how gradients flow through every neuron (see :class:`IFNeuron`)."""
        if mode not in GRADIENT_MODES:
            raise ConvertSNNError(
                f"unknown gradient mode '{mode}'; choose one of {', '.join(GRADIENT_MODES)}"
            )
        parsed = parse_surrogate(surrogate) if surrogate is not None else None
        for neuron in self.neurons():
            neuron.gradient_mode = mode
            if parsed is not None:
                neuron.surrogate = parsed

    @contextmanager
    def gradient(self, mode: str = "bptt", surrogate: str | Surrogate | None = None):
        """Temporarily use another gradient mode and/or surrogate (restored on exit)."""
        saved = [(n, n.gradient_mode, n.surrogate) for n in self.neurons()]
        self.set_gradient(mode, surrogate)
        try:
            yield self
        finally:
            for neuron, old_mode, old_surrogate in saved:
                neuron.gradient_mode = old_mode
                neuron.surrogate = old_surrogate

    @property
    def thresholds(self) -> dict[str, torch.Tensor]:
        """Each neuron's threshold by module name."""
        return {
            name: m.threshold.detach()
            for name, m in self.body.named_modules()
            if isinstance(m, IFNeuron)
        }
