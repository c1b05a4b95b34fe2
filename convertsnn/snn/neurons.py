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

Signed (ternary) spikes, ``signed=True``, off by default: a hardware-cost variant after Wang et
al. (IJCAI 2022, "Signed neuron with memory: towards simple, accurate and high-efficient ANN-SNN
conversion"). A neuron that has fired more positive than negative spikes so far and whose
membrane falls below 0 emits a negative spike, ``out[t] = -theta``, and its membrane is raised
by theta. Over-firing (spikes sent early for input that later turns negative) is taken back, so
the net count tracks the rounded running input, never below 0. It costs what binary neurons do
not: a second comparison, a spike counter per neuron, and synapses that accept -1 spikes.

Burst spikes, ``burst=K`` with K >= 2, off by default (K = 1 is the binary neuron): a
hardware-cost variant after Li and Zeng (IJCAI 2022, "Efficient and accurate conversion of
spiking neural network with burst spikes"). At each step the neuron emits
``s[t] = clamp(floor(u[t] / theta), 0, K)`` spikes, each worth theta (``out[t] = s[t] * theta``),
and its membrane drops by ``s[t] * theta`` (reset by subtraction only). A membrane that has
charged past 2 theta (input arriving unevenly, or a current above theta) is passed on at once
instead of over later steps, and a neuron can send up to ``K * theta`` per step. It costs a
divider (or K comparisons) per neuron and up to K synaptic events per neuron and step.

Population coding, ``population=K`` with K >= 2, off by default (K = 1 is the single neuron):
a hardware-cost variant in the spirit of Lv et al.'s group neurons (ICASSP 2024, "Optimal ANN-SNN
conversion with group neurons"), but built from K *independent* binary IF neurons, so it runs on
binary-spike hardware. Each unit becomes K member neurons that receive the same input current
and threshold and differ only in their initial membrane, ``theta * (k + 1/2) / K`` for
``k = 0..K-1`` (mean theta/2); the unit's output is the members' mean, ``theta / K * sum_k
s_k[t]``, i.e. each member's spikes reach the next layer with 1/K of the weight. For a constant
input Hermite's identity (``sum_k floor(y + k/K) = floor(K y)``) makes the K members' spike
count exactly the rounding of the input to ``K * T`` levels of ``theta / (K T)``: the
resolution of K times as many steps at the same latency. It costs K times the neurons and the
synapses of each spiking layer (at most one spike per member and step).

Dithered initial membrane, ``dither=a`` with 0 < a <= min(v_init, 1 - v_init), off by default:
each neuron draws its initial membrane per input and per forward pass from
``theta * U[v_init - a, v_init + a]``. Over T steps an IF neuron rounds its mean input to one
of T + 1 levels; the draw moves the rounding boundaries at random, so the rounding is dithered
(non-subtractive dither, Schuchman 1964: with a = 0.5 its expected error no longer depends on the
input) and an attack cannot place a perturbation on boundaries it does not know. The model
becomes stochastic: it is evaluated with EOT, and exports refuse it. It costs one random number
per neuron and inference (the initial membrane; benchmarks/results/dither_probe.md).
"""

from __future__ import annotations

import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.compiled import compiled_dynamics, member_mean
from convertsnn.snn.surrogate import Surrogate, parse_surrogate

GRADIENT_MODES = ("bptt", "bptr", "ann")
MAX_BURST = 255  # burst spike counts are kept as uint8 for the backward pass
MAX_POPULATION = 64
RESETS = ("subtract", "zero")


def unfold_time(x: torch.Tensor, steps: int, layer: str = "neuron") -> torch.Tensor:
    """View a time-folded ``[T*B, ...]`` batch as ``[T, B, ...]``; ``layer`` names the caller
    in the one-line error raised when the batch is not a multiple of ``T = steps``."""
    if x.shape[0] % steps:
        raise ConvertSNNError(
            f"{layer} got a batch of {x.shape[0]}, not a multiple of T={steps}; "
            "run it inside a SpikingNetwork"
        )
    return _TimeView.apply(x, steps)


class _TimeView(torch.autograd.Function):
    """``x`` ``[T*B, ...]`` viewed as ``[T, B, ...]``, whose backward hands ``x`` a gradient that
    is not a view. Autograd's own view would pass back a view of the gradient of ``[T, B, ...]``,
    which keeps that tensor alive, so where a layer's output feeds both a convolution and a
    residual sum autograd could not add the two gradients in place: one more full-tensor add per
    residual block (``detach`` gives the same memory without the base; not when the backward
    pass itself records a graph, ``create_graph=True``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: int) -> torch.Tensor:  # type: ignore[override]
        return x.view(steps, x.shape[0] // steps, *x.shape[1:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        folded = grad.flatten(0, 1)
        return (folded if torch.is_grad_enabled() else folded.detach()), None


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
        signed: emit negative spikes that take back earlier positive ones (see the module doc;
            a hardware-cost variant, off by default).
        burst: at most this many spikes per step (see the module doc; 1, the default, is the
            binary neuron; K >= 2 is a hardware-cost variant and needs reset by subtraction).
            Surrogate gradient of a burst: the surrogate family is applied around each of the
            K thresholds ``k * theta`` and summed (``ds/du = sum_k f'(u - k theta)``), except
            in :meth:`simulate`, where only the first threshold passes a gradient.
        dither: half-width ``a`` of the random initial membrane ``theta * U[v_init - a,
            v_init + a]`` drawn per input and forward pass (see the module doc; 0, the default,
            is deterministic).
        population: member neurons per unit (see the module doc; 1, the default, is the single
            neuron; K >= 2 is a hardware-cost variant of binary neurons with initial membranes
            ``(k + 1/2) / K`` in place of ``v_init``, which must stay 0.5; reset by subtraction,
            not with signed, burst or dithered neurons).

    Gradient modes (attribute ``gradient_mode``): ``"bptt"`` backpropagates through time with
    the surrogate; ``"bptr"`` backpropagates through the firing rate (the gradient of ReLU at the
    rate, as in seed 001's ``RateBp``); ``"ann"`` makes the neuron a plain ReLU (the source-ANN
    proxy, to be run with one timestep).

    Runtime (attribute ``runtime``): ``"eager"`` runs the dynamics as a few PyTorch kernels per
    step; ``"compiled"`` as one kernel per direction (:mod:`convertsnn.snn.compiled`; same
    spikes, binary neurons with a :class:`Surrogate` only, others stay eager).
    """

    def __init__(
        self,
        threshold: float | torch.Tensor = 1.0,
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
        super().__init__()
        if not 0 < leak <= 1:
            raise ConvertSNNError(f"neuron leak must be in (0, 1], got {leak}")
        if reset not in RESETS:
            raise ConvertSNNError(f"unknown reset '{reset}'; choose one of {', '.join(RESETS)}")
        if signed and reset != "subtract":
            raise ConvertSNNError("signed spikes need reset by subtraction (reset='subtract')")
        self.burst = check_burst(burst, reset, signed)
        self.threshold = nn.Parameter(torch.as_tensor(threshold, dtype=torch.float32).clone())
        self.leak = float(leak)
        self.reset = reset
        self.v_init = float(v_init)
        self.dither = check_dither(dither, self.v_init)
        self.population = check_population(population, reset, signed, burst, v_init, dither)
        self.surrogate = parse_surrogate(surrogate)
        self.min_threshold = float(min_threshold)
        self.signed = bool(signed)
        self.timesteps = 1
        self.gradient_mode = "bptt"
        self.runtime = "eager"

    def config(self) -> dict:
        """Constructor arguments except the threshold (which is a parameter); ``signed``,
        ``burst``, ``dither`` and ``population`` only when set, so files of binary neurons are
        written as before."""
        config = {
            "leak": self.leak,
            "reset": self.reset,
            "v_init": self.v_init,
            "surrogate": str(self.surrogate),
            "min_threshold": self.min_threshold,
        }
        if self.signed:
            config["signed"] = True
        if self.burst > 1:
            config["burst"] = self.burst
        if self.dither:
            config["dither"] = self.dither
        if self.population > 1:
            config["population"] = self.population
        return config

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

    def initial_membrane(self, seq: torch.Tensor) -> float | torch.Tensor:
        """``u[0] / theta`` for the inputs ``[T, B, ...]``: ``v_init``, or with ``dither`` one
        draw per input and neuron from ``U[v_init - dither, v_init + dither]`` ``[B, ...]``, or
        for a population of K members (``seq`` of :meth:`members`, ``[T, K*B, ...]``) member k's
        ``(k + 1/2) / K`` ``[K*B, ...]``."""
        if self.population > 1:
            k = self.population
            offsets = member_offsets(k, seq.dtype, seq.device)
            shape = (k, seq.shape[1] // k, *seq.shape[2:])
            return offsets.view(k, *([1] * (len(shape) - 1))).expand(shape).flatten(0, 1)
        if not self.dither:
            return self.v_init
        noise = torch.rand(seq.shape[1:], dtype=seq.dtype, device=seq.device)
        return self.v_init + self.dither * (2 * noise - 1)

    def members(self, seq: torch.Tensor) -> torch.Tensor:
        """The inputs ``[T, B, ...]`` of a population of K members, member-major: ``[T, K*B, ...]``."""
        k = self.population
        return seq.unsqueeze(1).expand(seq.shape[0], k, *seq.shape[1:]).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: input currents ``[T*B, ...]``; returns ``theta * spikes`` (a population's mean
        over its members), same shape."""
        if self.gradient_mode == "ann":
            return torch.relu(x)
        return self._dynamics(unfold_time(x, self.timesteps), self._theta(x.dim())).flatten(0, 1)

    def _dynamics(self, seq: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``theta * spikes`` ``[T, B, ...]`` (a population's member mean) for the input
        currents ``seq`` ``[T, B, ...]``, by the fastest path that gives the gradient the
        gradient mode asks for."""
        needs_grad = torch.is_grad_enabled() and (seq.requires_grad or theta.requires_grad)
        if (
            self.runtime == "compiled"
            and self.gradient_mode == "bptt"
            and self.burst == 1
            and not self.signed
            and isinstance(self.surrogate, Surrogate)
        ):  # a population's members read seq in the kernel (no K-fold copy)
            v_init = (
                member_offsets(self.population, seq.dtype, seq.device)
                if self.population > 1
                else self.initial_membrane(seq)
            )
            out = compiled_dynamics(seq, theta, self.leak, self.reset == "zero", v_init,
                                    self.surrogate, needs_grad, self.population)  # fmt: skip
            if out is not None:
                return out
        if self.population == 1:
            return self._member_dynamics(seq, theta, needs_grad)
        out = self._member_dynamics(self.members(seq), theta, needs_grad)
        return member_mean(out.view(out.shape[0], self.population, -1, *out.shape[2:]).unbind(1))

    def _member_dynamics(
        self, seq: torch.Tensor, theta: torch.Tensor, needs_grad: bool
    ) -> torch.Tensor:
        """``theta * spikes`` ``[T, B, ...]`` of every neuron (a population's members as
        batch rows, :meth:`members`), by the eager paths."""
        v_init = self.initial_membrane(seq)
        if self.gradient_mode == "bptr":
            return _RateBackprop.apply(seq, theta, self, v_init)
        settings = (self.leak, self.reset == "zero", v_init)
        if not needs_grad and (self.signed or isinstance(self.surrogate, Surrogate)):
            out, _, _ = integrate_and_fire(
                seq, theta, *settings, signed=self.signed, burst=self.burst
            )
            return out
        if isinstance(self.surrogate, Surrogate) and not self.signed:
            return _IFDynamics.apply(seq, theta, *settings, self.surrogate, self.burst)
        return self.simulate(seq, theta, self.surrogate, v_init)

    def simulate(
        self,
        seq: torch.Tensor,
        theta: torch.Tensor,
        surrogate,
        v_init: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the dynamics step by step through autograd; returns ``theta * spikes`` ``[T, B, ...]``.

        ``surrogate`` is any object whose ``spike(x, theta)`` is called once per step, in order
        and whose ``detach_reset`` (default False) excludes the reset from the graph (e.g.
        the adaptive surrogate of :mod:`convertsnn.attacks.adaptive_surrogate`). For a plain
        :class:`Surrogate` the forward pass uses the equivalent, faster :class:`_IFDynamics`.
        Burst neurons: the spike count of the forward pass, with the gradient of the surrogate
        around the first threshold only (the surrogate is called once per step). ``v_init``:
        the initial membrane as a fraction of theta (default: the neuron's ``v_init``).
        """
        v_init = self.v_init if v_init is None else v_init
        u = torch.zeros_like(seq[0]) + v_init * theta
        detach_reset = surrogate.detach_reset
        count = torch.zeros_like(u) if self.signed else None
        out = []
        for current in seq:
            u = self.leak * u + current
            spike = surrogate.spike(u - theta, theta)
            if self.burst > 1:  # the count forward, the first threshold's surrogate backward
                spike = burst_count(u.detach(), theta.detach(), self.burst) + (
                    spike - spike.detach()
                )
            if count is not None:  # negative spikes (no surrogate gradient of their own)
                spike = spike - ((u < 0) & (count > 0)).to(u.dtype)
                count = count + spike.detach()
            reset = spike.detach() if detach_reset else spike
            u = u - reset * theta if self.reset == "subtract" else u * (1 - reset)
            out.append(spike * theta)
        return torch.stack(out)


def integrate_and_fire(
    seq: torch.Tensor,
    theta: torch.Tensor,
    leak: float,
    reset_zero: bool,
    v_init: float | torch.Tensor,
    keep: bool = False,
    signed: bool = False,
    burst: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The forward dynamics of :meth:`IFNeuron.simulate`, in place and without autograd.

    Returns ``(out, membrane, spikes)``: ``out = theta * spikes`` ``[T, B, ...]``; with ``keep``
    also the pre-spike membrane ``h[t]`` and the spikes as ``bool`` (``uint8`` counts for burst
    neurons; what the backward pass of :class:`_IFDynamics` needs), else ``None`` for both. Per
    step about four full-tensor kernels (five for LIF); one membrane ``[B, ...]`` is updated in
    place and nothing else is stored. Spikes and outputs are bit-identical to
    :meth:`IFNeuron.simulate`. ``v_init``: a float, or one value per input and neuron
    ``[B, ...]`` (dithered neurons). ``signed`` (not with ``keep``) adds the negative spikes of signed
    neurons (the ``out`` only); ``burst`` > 1 emits up to that many spikes per step (reset by
    subtraction only).
    """
    if signed:
        return _signed_integrate_and_fire(seq, theta, leak, v_init), None, None
    if burst > 1:
        return _burst_integrate_and_fire(seq, theta, leak, v_init, keep, burst)
    out = torch.empty_like(seq)
    membrane = torch.empty_like(seq) if keep else None
    spikes = torch.empty(seq.shape, dtype=torch.bool, device=seq.device) if keep else None
    # this step's spikes as 0/1 in the input's dtype: on CPU, kernels that read or write bool
    # run several times slower than float ones (benchmarks/results/spike_dtype.md)
    spike = torch.empty_like(seq[0])
    u = torch.empty_like(seq[0])
    u.copy_(v_init * theta)  # broadcast: u[0] = v_init * theta
    for t in range(len(seq)):
        if leak != 1.0:
            u.mul_(leak)
        h = torch.add(seq[t], u, out=membrane[t]) if keep else u.add_(seq[t])
        torch.ge(h, theta, out=spike)
        fired = torch.mul(spike, theta, out=out[t])
        if keep:
            spikes[t].copy_(spike)
        if reset_zero:
            torch.addcmul(h, h, spike, value=-1, out=u)  # h - h * spike: 0 where it fired
        else:
            torch.sub(h, fired, out=u)
    return out, membrane, spikes


def _signed_integrate_and_fire(
    seq: torch.Tensor, theta: torch.Tensor, leak: float, v_init: float | torch.Tensor
) -> torch.Tensor:
    """``theta * (positive - negative spikes)`` ``[T, B, ...]`` of signed neurons (reset by
    subtraction, no autograd)."""
    out = torch.empty_like(seq)
    u = torch.zeros_like(seq[0]) + v_init * theta
    count = torch.zeros_like(u)
    for t in range(len(seq)):
        h = leak * u + seq[t]
        spike = (h >= theta).to(seq.dtype) - ((h < 0) & (count > 0)).to(seq.dtype)
        count += spike
        out[t] = spike * theta
        u = h - out[t]
    return out


def check_burst(burst: int, reset: str = "subtract", signed: bool = False) -> int:
    """``burst`` as the most spikes per step K (1 = binary), refused in one line unless an
    integer from 1 to 255 with reset by subtraction and without signed spikes."""
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
        raise ConvertSNNError(
            f"burst is the most spikes per step, an integer from 1 (binary) to {MAX_BURST}, "
            f"got {burst!r}"
        )
    if burst > 1 and reset != "subtract":
        raise ConvertSNNError("burst spikes need reset by subtraction (reset='subtract')")
    if burst > 1 and signed:
        raise ConvertSNNError("burst and signed spikes cannot be combined; choose one")
    return burst


def check_dither(dither: float, v_init: float = 0.5) -> float:
    """``dither`` as the half-width of the random initial membrane, refused in one line unless
    the range ``[v_init - dither, v_init + dither]`` stays within [0, 1] (fractions of theta)."""
    try:
        value = float(dither)
    except (TypeError, ValueError):
        value = float("nan")
    limit = min(v_init, 1 - v_init)
    if isinstance(dither, bool) or not 0 <= value <= limit:
        raise ConvertSNNError(
            f"dither is the half-width of the random initial membrane, from 0 (off) to "
            f"{limit:g} with v_init {v_init:g} (the membrane starts within [0, theta]), got {dither!r}"
        )
    return value


def member_offsets(k: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """The initial membranes of a population's K members as fractions of theta, ``(k + 1/2) / K``."""
    return (torch.arange(k, dtype=dtype, device=device) + 0.5) / k


def check_population(
    population: int,
    reset: str = "subtract",
    signed: bool = False,
    burst: int = 1,
    v_init: float = 0.5,
    dither: float = 0.0,
) -> int:
    """``population`` as the member neurons per unit K (1 = a single neuron), refused in one line
    unless an integer from 1 to 64 with reset by subtraction, ``v_init`` 0.5 and binary,
    deterministic members."""
    if (
        isinstance(population, bool)
        or not isinstance(population, int)
        or not 1 <= population <= MAX_POPULATION
    ):
        raise ConvertSNNError(
            f"population is the member neurons per unit, an integer from 1 (a single neuron) to "
            f"{MAX_POPULATION}, got {population!r}"
        )
    if population == 1:
        return 1
    clash = [
        what
        for what, on in (
            ("reset to zero (use reset='subtract')", reset != "subtract"),
            ("signed spikes", signed),
            ("burst spikes", burst > 1),
            ("a dither", dither),
            (f"v_init {v_init:g} (the members start at (k + 1/2) / K; use 0.5)", v_init != 0.5),
        )
        if on
    ]
    if clash:
        raise ConvertSNNError(f"a population of {population} binary neurons cannot have {clash[0]}")
    return population


def burst_count(h: torch.Tensor, theta: torch.Tensor, burst: int) -> torch.Tensor:
    """Spikes of a burst neuron at membrane ``h``: ``clamp(floor(h / theta), 0, burst)``."""
    return torch.floor(h / theta).clamp_(0, burst)


def _burst_integrate_and_fire(
    seq: torch.Tensor,
    theta: torch.Tensor,
    leak: float,
    v_init: float | torch.Tensor,
    keep: bool,
    burst: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`integrate_and_fire` for burst neurons (reset by subtraction); with ``keep`` the
    spike counts come back as ``uint8``."""
    out = torch.empty_like(seq)
    membrane = torch.empty_like(seq) if keep else None
    spikes = torch.empty(seq.shape, dtype=torch.uint8, device=seq.device) if keep else None
    u = torch.zeros_like(seq[0]) + v_init * theta
    for t in range(len(seq)):
        h = leak * u + seq[t]
        count = burst_count(h, theta, burst)
        if keep:
            membrane[t] = h
            spikes[t] = count
        torch.mul(count, theta, out=out[t])
        u = h - out[t]
    return out, membrane, spikes


class _IFDynamics(torch.autograd.Function):
    """The IF/LIF dynamics of :meth:`IFNeuron.simulate` with a hand-written BPTT.

    One autograd node for all T steps instead of about six per step; the forward pass is
    :func:`integrate_and_fire`, which keeps the pre-spike membrane ``h[t] = leak * u[t-1] + I[t]``
    and the spikes (as ``bool``). Backward, from ``t = T`` down to 1, with
    ``sg = surrogate'(h - theta)`` and ``gu`` the gradient reaching ``u[t]`` from later steps::

        subtract:  gs = go*theta - gu*theta;  gh = gu + gs*sg;          gtheta += go*s - gu*s - gs*sg
        zero:      gs = go*theta - gu*h;      gh = gu*(1 - s) + gs*sg;  gtheta += go*s - gs*sg
        gI[t] = gh;  gu <- leak * gh;   finally gtheta += v_init * gu   (u[0] = v_init * theta)

    The threshold gradient is computed only when the threshold needs one (not during attacks
    on a frozen model) and is reduced to the threshold's shape at every step.
    With ``surrogate.detach_reset`` the spike in the reset is a constant: ``gs = go*theta``.
    Burst neurons (``s = clamp(floor(h / theta), 0, K)``, reset by subtraction): ``sg`` becomes
    ``sum_k surrogate'(h - k theta)`` and the threshold term ``gs*sg`` becomes
    ``gs * sum_k k surrogate'(h - k theta)`` (the surrogate around each of the K thresholds).
    """

    @staticmethod
    def forward(ctx, seq, theta, leak, reset_zero, v_init, surrogate, burst=1):  # type: ignore[override]
        out, membrane, spikes = integrate_and_fire(
            seq, theta, leak, reset_zero, v_init, True, burst=burst
        )
        ctx.save_for_backward(membrane, spikes, theta)
        ctx.settings = (leak, reset_zero, v_init, surrogate)
        ctx.burst = burst
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        membrane, spikes, theta = ctx.saved_tensors
        grad_in, grad_theta = backprop_through_time(
            grad_out, membrane, spikes, theta, *ctx.settings, ctx.needs_input_grad[1], ctx.burst
        )
        return grad_in, grad_theta, None, None, None, None, None


def backprop_through_time(
    grad_out: torch.Tensor,
    membrane: torch.Tensor,
    spikes: torch.Tensor,
    theta: torch.Tensor,
    leak: float,
    reset_zero: bool,
    v_init: float | torch.Tensor,
    surrogate: Surrogate,
    need_theta: bool,
    burst: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backward pass of :class:`_IFDynamics`: gradients of the input currents and (when
    ``need_theta``) of the threshold, from the output gradient and what the forward kept."""
    reduce = (lambda g: g.sum_to_size(theta.shape)) if theta.dim() else (lambda g: g.sum())
    grad_in = torch.empty_like(membrane)
    grad_theta = []
    gu = torch.zeros_like(membrane[0])
    detach_reset = surrogate.detach_reset
    for t in range(len(membrane) - 1, -1, -1):
        h, go, spike = membrane[t], grad_out[t], spikes[t]
        sg = surrogate.derivative(h - theta, theta)
        sg_theta = sg  # ds/dtheta = -sg_theta
        if burst > 1:
            above = {k: surrogate.derivative(h - k * theta, theta) for k in range(2, burst + 1)}
            sg_theta = sg + sum(k * d for k, d in above.items())
            sg = sg + sum(above.values())
        if reset_zero:
            gs = go * theta if detach_reset else go * theta - gu * h
            gssg = gs * sg
            gh = torch.add(gu.masked_fill(spike, 0.0), gssg, out=grad_in[t])
            if need_theta:
                grad_theta.append(reduce(torch.where(spike, go, 0.0) - gssg))
        else:
            d = go - gu
            gs = torch.mul(go if detach_reset else d, theta)
            gssg = gs * sg if burst > 1 else gs.mul_(sg)
            gh = torch.add(gu, gssg, out=grad_in[t])
            if need_theta:
                gs_theta = gs.mul_(sg_theta) if burst > 1 else gssg
                d_spike = d.mul_(spike) if burst > 1 else torch.where(spike, d, 0.0)
                grad_theta.append(reduce(d_spike.sub_(gs_theta)))
        gu = gh if leak == 1.0 else gh * leak
    if not need_theta:
        return grad_in, None
    return grad_in, torch.stack(grad_theta).sum(0) + reduce(v_init * gu)


class _RateBackprop(torch.autograd.Function):
    """Spikes forward; backward as ReLU of the firing rate (BPTR, seed 001's ``RateBp``)."""

    @staticmethod
    def forward(ctx, seq, theta, neuron: IFNeuron, v_init):  # type: ignore[override]
        settings = (neuron.leak, neuron.reset == "zero", v_init)
        out = integrate_and_fire(seq, theta, *settings, signed=neuron.signed, burst=neuron.burst)[0]
        ctx.save_for_backward((out.mean(0, keepdim=True) > 0).to(seq.dtype))
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (active,) = ctx.saved_tensors
        return grad_output * active, None, None, None
