"""Spiking neurons that replace the ReLUs of a converted network.

Shapes: a neuron receives the whole spike train of its layer at once, with time folded into the
batch, time-major: ``[T*B, ...]`` where ``T = neuron.timesteps`` (set by
:class:`~convertsnn.snn.network.SpikingNetwork`). It unfolds this into ``[T, B, ...]``, runs the
membrane dynamics step by step, and returns ``[T*B, ...]``. Membrane state lives only inside one
call, so nothing leaks from one input to the next.

Dynamics per step ``t`` (Rueckauer et al. 2017; Bu et al. 2022, QCFS, for the initial membrane):

    u[t] = leak * u[t-1] + I[t]                  (IF: leak = 1, LIF: leak < 1)
    s[t] = H(u[t] - theta)                        (surrogate gradient in backward)
    u[t] = u[t] - s[t] * theta                    (reset="subtract", default)
         | u[t] * (1 - s[t])                      (reset="zero")
    out[t] = s[t] * theta
    u[0] = v_init * theta

The output is the spike times the threshold, which equals binary spikes with the next layer's
weights scaled by theta; the firing rate times theta approximates ``clamp(ReLU(I), 0, theta)``.
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.surrogate import Surrogate, parse_surrogate

GRADIENT_MODES = ("bptt", "bptr", "ann")
RESETS = ("subtract", "zero")


def unfold_time(x: torch.Tensor, steps: int, layer: str = "neuron") -> torch.Tensor:
    """View a time-folded ``[T*B, ...]`` batch as ``[T, B, ...]``; ``layer`` names the caller
    in the one-line error raised when the batch is not a multiple of ``T = steps``."""
    if x.shape[0] % steps:
        raise ConvertSNNError(
            f"{layer} got a batch of {x.shape[0]}, not a multiple of T={steps}; "
            "run it inside a SpikingNetwork"
        )
    return x.view(steps, x.shape[0] // steps, *x.shape[1:])


class IFNeuron(nn.Module):
    """Integrate-and-fire neuron with a learnable threshold (LIF when ``leak < 1``).

    Args:
        threshold: firing threshold; a scalar (one per layer) or a 1-D tensor with one value
            per channel (dimension 1 of the input).
        leak: membrane leak per step; 1.0 is IF, values in (0, 1) make it LIF.
        reset: ``"subtract"`` (reset by subtraction, default) or ``"zero"``.
        v_init: initial membrane potential as a fraction of the threshold (0.5 as in QCFS).
        surrogate: surrogate gradient spec, see :mod:`convertsnn.snn.surrogate`.
        min_threshold: thresholds are clamped to at least this value in the forward pass.

    Gradient modes (attribute ``gradient_mode``): ``"bptt"`` backpropagates through time with
    the surrogate; ``"bptr"`` backpropagates through the firing rate (the gradient of ReLU at the
    rate, as in seed 001's ``RateBp``); ``"ann"`` makes the neuron a plain ReLU (the source-ANN
    proxy, to be run with one timestep).
    """

    def __init__(
        self,
        threshold: float | torch.Tensor = 1.0,
        leak: float = 1.0,
        reset: str = "subtract",
        v_init: float = 0.5,
        surrogate: str | Surrogate = "triangle:1",
        min_threshold: float = 1e-3,
    ) -> None:
        super().__init__()
        if not 0 < leak <= 1:
            raise ConvertSNNError(f"neuron leak must be in (0, 1], got {leak}")
        if reset not in RESETS:
            raise ConvertSNNError(f"unknown reset '{reset}'; choose one of {', '.join(RESETS)}")
        self.threshold = nn.Parameter(torch.as_tensor(threshold, dtype=torch.float32).clone())
        self.leak = float(leak)
        self.reset = reset
        self.v_init = float(v_init)
        self.surrogate = parse_surrogate(surrogate)
        self.min_threshold = float(min_threshold)
        self.timesteps = 1
        self.gradient_mode = "bptt"

    def config(self) -> dict:
        """Constructor arguments except the threshold (which is a parameter)."""
        return {
            "leak": self.leak,
            "reset": self.reset,
            "v_init": self.v_init,
            "surrogate": str(self.surrogate),
            "min_threshold": self.min_threshold,
        }

    def extra_repr(self) -> str:
        shape = tuple(self.threshold.shape)
        return f"threshold={'scalar' if not shape else shape}, " + ", ".join(
            f"{k}={v}" for k, v in self.config().items()
        )

    def _theta(self, ndim: int) -> torch.Tensor:
        theta = self.threshold.clamp(min=self.min_threshold)
        if theta.dim() == 1:  # one threshold per channel (dim 1 of [B, C, ...])
            theta = theta.view(-1, *([1] * (ndim - 2)))
        return theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: input currents ``[T*B, ...]``; returns ``theta * spikes``, same shape."""
        if self.gradient_mode == "ann":
            return torch.relu(x)
        seq = unfold_time(x, self.timesteps)
        theta = self._theta(x.dim())
        if self.gradient_mode == "bptr":
            return _RateBackprop.apply(seq, theta, self).flatten(0, 1)
        if isinstance(self.surrogate, Surrogate):
            out = _IFDynamics.apply(
                seq, theta, self.leak, self.reset == "zero", self.v_init, self.surrogate
            )
            return out.flatten(0, 1)
        return self.simulate(seq, theta, self.surrogate).flatten(0, 1)

    def simulate(self, seq: torch.Tensor, theta: torch.Tensor, surrogate) -> torch.Tensor:
        """Run the dynamics step by step through autograd; returns ``theta * spikes`` ``[T, B, ...]``.

        ``surrogate`` is any object whose ``spike(x, theta)`` is called once per step, in order
        and whose ``detach_reset`` (default False) excludes the reset from the graph (e.g.
        the adaptive surrogate of :mod:`convertsnn.attacks.adaptive_surrogate`). For a plain
        :class:`Surrogate` the forward pass uses the equivalent, faster :class:`_IFDynamics`.
        """
        u = torch.zeros_like(seq[0]) + self.v_init * theta
        detach_reset = getattr(surrogate, "detach_reset", False)
        out = []
        for current in seq:
            u = self.leak * u + current
            spike = surrogate.spike(u - theta, theta)
            reset = spike.detach() if detach_reset else spike
            u = u - reset * theta if self.reset == "subtract" else u * (1 - reset)
            out.append(spike * theta)
        return torch.stack(out)


class _IFDynamics(torch.autograd.Function):
    """The IF/LIF dynamics of :meth:`IFNeuron.simulate` with a hand-written BPTT.

    One autograd node for all T steps instead of about six per step; only the pre-spike
    membrane ``h[t] = leak * u[t-1] + I[t]`` is stored. Backward, from ``t = T`` down to 1, with
    ``sg = surrogate'(h - theta)`` and ``gu`` the gradient reaching ``u[t]`` from later steps::

        subtract:  gs = go*theta - gu*theta;  gh = gu + gs*sg;          gtheta += go*s - gu*s - gs*sg
        zero:      gs = go*theta - gu*h;      gh = gu*(1 - s) + gs*sg;  gtheta += go*s - gs*sg
        gI[t] = gh;  gu <- leak * gh;   finally gtheta += v_init * gu   (u[0] = v_init * theta)

    With ``surrogate.detach_reset`` the spike in the reset is a constant: ``gs = go*theta``.
    """

    @staticmethod
    def forward(ctx, seq, theta, leak, reset_zero, v_init, surrogate):  # type: ignore[override]
        membrane = torch.empty_like(seq)
        out = torch.empty_like(seq)
        u = v_init * theta
        for t, current in enumerate(seq):
            h = current + leak * u
            spike = (h >= theta).to(seq.dtype)
            membrane[t] = h
            out[t] = spike * theta
            u = h * (1 - spike) if reset_zero else h - spike * theta
        ctx.save_for_backward(membrane, theta)
        ctx.settings = (leak, reset_zero, v_init, surrogate)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        membrane, theta = ctx.saved_tensors
        leak, reset_zero, v_init, surrogate = ctx.settings
        grad_in = torch.empty_like(membrane)
        grad_theta = torch.zeros_like(membrane[0])
        gu = torch.zeros_like(membrane[0])
        for t in range(len(membrane) - 1, -1, -1):
            h, go = membrane[t], grad_out[t]
            sg = surrogate.derivative(h - theta, theta)
            spike = (h >= theta).to(h.dtype)
            if reset_zero:
                gs = go * theta - (0 if surrogate.detach_reset else gu * h)
                gh = gu * (1 - spike) + gs * sg
                grad_theta += go * spike - gs * sg
            else:
                gs = (go if surrogate.detach_reset else go - gu) * theta
                gh = gu + gs * sg
                grad_theta += (go - gu) * spike - gs * sg
            grad_in[t] = gh
            gu = leak * gh
        grad_theta += v_init * gu
        grad_theta = grad_theta.sum_to_size(theta.shape) if theta.dim() else grad_theta.sum()
        return grad_in, grad_theta, None, None, None, None


class _RateBackprop(torch.autograd.Function):
    """Spikes forward; backward as ReLU of the firing rate (BPTR, seed 001's ``RateBp``)."""

    @staticmethod
    def forward(ctx, seq: torch.Tensor, theta: torch.Tensor, neuron: IFNeuron):  # type: ignore[override]
        with torch.no_grad():
            out = neuron.simulate(seq, theta, neuron.surrogate)
        ctx.save_for_backward((out.mean(0, keepdim=True) > 0).to(seq.dtype))
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (active,) = ctx.saved_tensors
        return grad_output * active, None, None
