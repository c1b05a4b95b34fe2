"""The ``compiled`` runtime: IF/LIF dynamics fused into one kernel per direction by torch.compile.

The eager neuron (:func:`~convertsnn.snn.neurons.integrate_and_fire` and
:func:`~convertsnn.snn.neurons.backprop_through_time`) runs about four full-tensor kernels per
step forward and eight backward, each reading and writing the whole layer. Here the loop over
the T steps is written once for one neuron and compiled by TorchInductor (``torch.compile`` of the
neuron function alone, not of the network): every neuron's T steps run in registers in one
kernel, which reads the input currents once and writes the outputs once.

- Forward: the same float operations in the same order as the eager neuron (no fused
  multiply-add), so spikes and outputs are bit-identical (tests/test_compiled_runtime.py).
- Backward: recomputes the forward inside the kernel instead of storing the membrane and the
  spikes, so a BPTT pass keeps only the input currents of each spiking layer; gradients equal the
  eager ones within float rounding (the threshold gradient is summed in another order).
- Populations of K members (``IFNeuron(population=K)``): the K members run inside the same
  kernel, each reading the layer's input current (the eager neuron runs them on a K-fold copy
  of the input as K times the batch); the forward writes their mean, the backward the sum of
  their input gradients.

Binary IF/LIF neurons with a :class:`~convertsnn.snn.surrogate.Surrogate` in ``bptt`` mode, or
without gradients, use it (dithered ones too: their initial membrane is one more input);
signed and burst neurons, ``bptr`` and custom surrogates (the adaptive attack) stay on the
eager path. Compiling takes seconds per (T, population, surrogate, scalar/per-channel
threshold) the first time in a process (a population's forward, whose members are unrolled,
longer: about 0.1-0.2 s per member and step; TorchInductor caches on disk for later ones)
and needs a C++ compiler on CPU (Triton on CUDA); if compiling fails, the eager
neuron takes over with a one-line warning (a backward pass already under way finishes with the
same BPTT uncompiled).
"""

from __future__ import annotations

import logging
import warnings

import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.surrogate import Surrogate, surrogate_derivative

RUNTIMES = ("eager", "compiled")
RECOMPILE_LIMIT = 64  # one variant per (T, population, surrogate, threshold layout, direction)


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a one-line error."""
    if runtime not in RUNTIMES:
        raise ConvertSNNError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    return runtime


_failure: str | None = None  # why compiling failed in this process (then everything is eager)


def _initial_membranes(
    seq: torch.Tensor, theta: torch.Tensor, v_init: float | torch.Tensor, population: int
) -> list[torch.Tensor]:
    """``u[0]`` of each member: ``v_init * theta`` for a single neuron, ``v_init[k] * theta``
    for member k of a population (``v_init``: the K member offsets)."""
    if population == 1:
        return [torch.zeros_like(seq[0]) + v_init * theta]
    return [torch.zeros_like(seq[0]) + v_init[k] * theta for k in range(population)]


def member_mean(fired: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The mean of a population's member outputs, summed in member order then divided by K:
    one fixed order for the eager and compiled neurons (``Tensor.mean`` sums in an order that
    depends on the shape), so both give bit-identical outputs."""
    total = fired[0]
    for member in fired[1:]:
        total = total + member
    return total / len(fired) if len(fired) > 1 else total


def _forward(seq: torch.Tensor, theta: torch.Tensor, v_init: float | torch.Tensor, leak: float,
             reset_zero: bool, population: int = 1) -> torch.Tensor:  # fmt: skip
    """``theta * spikes`` ``[T, ...]`` of :func:`~convertsnn.snn.neurons.integrate_and_fire`
    (a population's member mean, every member reading the same input)."""
    members = _initial_membranes(seq, theta, v_init, population)
    out = []
    for t in range(seq.shape[0]):
        fired_members = []
        for k, u in enumerate(members):
            h = (u * leak if leak != 1.0 else u) + seq[t]
            spike = h >= theta
            fired = torch.where(spike, theta, 0.0)
            members[k] = torch.where(spike, 0.0, h) if reset_zero else h - fired
            fired_members.append(fired)
        out.append(member_mean(fired_members))
    return torch.stack(out)


def _backward(
    seq: torch.Tensor,
    theta: torch.Tensor,
    grad_out: torch.Tensor,
    v_init: float | torch.Tensor,
    leak: float,
    reset_zero: bool,
    family: str,
    g: float,
    absolute: bool,
    detach_reset: bool,
    need_theta: bool,
    population: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input (and threshold) gradients of :func:`_forward`: the BPTT of
    :class:`~convertsnn.snn.neurons._IFDynamics`, recomputing the membrane from ``seq``. A
    population's K members run along a leading dimension ``[K, B, C, R]``, each getting
    ``grad_out / K``; their input gradients are summed. (Unrolled member by member, as the
    forward is, it took six times longer to compile at K = 8 and was 8-12 % faster at K = 4,
    slower at K = 8: benchmarks/results/speed_t8_b64_population*_unrolled_backward.md.)"""
    offsets = v_init if population == 1 else v_init.view(-1, 1, 1, 1)
    members = () if population == 1 else (population,)
    u = seq.new_zeros((*members, *seq.shape[1:])) + offsets * theta
    membrane, spikes = [], []
    for t in range(seq.shape[0]):
        h = (u * leak if leak != 1.0 else u) + seq[t]
        spike = h >= theta
        u = torch.where(spike, 0.0, h) if reset_zero else h - torch.where(spike, theta, 0.0)
        membrane.append(h)
        spikes.append(spike)
    gu = torch.zeros_like(u)
    grad_in = [seq[0]] * seq.shape[0]
    grad_theta = torch.zeros_like(u)
    for t in range(seq.shape[0] - 1, -1, -1):
        h, spike = membrane[t], spikes[t]
        go = grad_out[t] if population == 1 else grad_out[t] / population
        x = h - theta
        sg = surrogate_derivative(family, x if absolute else x / theta, g)
        sg = sg if absolute else sg / theta
        if reset_zero:
            gs = go * theta if detach_reset else go * theta - gu * h
            gssg = gs * sg
            gh = torch.where(spike, 0.0, gu) + gssg
            if need_theta:
                grad_theta = grad_theta + torch.where(spike, go, 0.0) - gssg
        else:
            d = go - gu
            gssg = (go if detach_reset else d) * theta * sg
            gh = gu + gssg
            if need_theta:
                grad_theta = grad_theta + torch.where(spike, d, 0.0) - gssg
        grad_in[t] = gh if population == 1 else gh.sum(0)
        gu = gh * leak if leak != 1.0 else gh
    if not need_theta:
        return torch.stack(grad_in), None
    return torch.stack(grad_in), (grad_theta + offsets * gu).sum_to_size(theta.shape)


_compiled: dict[str, object] = {}


def _kernel(name: str):
    """The compiled ``_forward`` or ``_backward`` (compiled lazily, shapes dynamic)."""
    if name not in _compiled:
        import torch._dynamo.config

        # on CPU-only machines inductor's C++ builder logs "No CUDA runtime is found" at WARNING
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        _compiled[name] = torch.compile({"forward": _forward, "backward": _backward}[name],
                                        dynamic=True)  # fmt: skip
    return _compiled[name]


def _channels_last(seq: torch.Tensor) -> bool:
    """Whether ``seq`` ``[T, B, C, H, W]`` holds each position's channels next to each other
    (the layer's input is ``channels_last``)."""
    return seq.dim() == 5 and seq.shape[2] > 1 and seq.stride(2) == 1 and not seq.is_contiguous()


def _fold(
    seq: torch.Tensor, theta: torch.Tensor, v_init: float | torch.Tensor, population: int
) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """``[T, B, C, ...]`` as ``[T, B, C, R]`` (a ``channels_last`` feature map as ``[T, B, R, C]``,
    a view as well), the threshold as ``[C, 1]`` (``[1, C]``; or ``[1, 1]``) and a per-input
    initial membrane ``[B, C, ...]`` (dithered neurons) in the same layout as the inputs (a float
    and a population's K member offsets stay as they are), so that one compiled kernel serves
    every layer shape without copying its input."""
    channels_last = _channels_last(seq)
    seq4 = _fold_like(seq, channels_last)
    if not isinstance(v_init, float) and population == 1:
        if channels_last:
            v_init = v_init.permute(0, 2, 3, 1)
        v_init = v_init.reshape(seq4.shape[1:])
    return seq4, theta.reshape(1, -1) if channels_last else theta.reshape(-1, 1), v_init


def _unfold(folded: torch.Tensor, shape: torch.Size, channels_last: bool) -> torch.Tensor:
    """A tensor in :func:`_fold`'s layout back in the inputs' ``shape`` (and layout)."""
    if channels_last:
        steps, batch, channels, height, width = shape
        return folded.view(steps, batch, height, width, channels).permute(0, 1, 4, 2, 3)
    return folded.view(shape)


def _fold_like(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` ``[T, B, C, ...]`` (the inputs, or the outputs' gradient) in :func:`_fold`'s layout:
    ``[T, B, C, R]``, or ``[T, B, R, C]`` for a ``channels_last`` feature map."""
    steps, batch = x.shape[:2]
    channels = x.shape[2] if x.dim() > 2 else 1
    if channels_last:
        return x.permute(0, 1, 3, 4, 2).reshape(steps, batch, -1, channels)
    return x.reshape(steps, batch, channels, -1)


class _CompiledIFDynamics(torch.autograd.Function):
    """:class:`~convertsnn.snn.neurons._IFDynamics` with compiled kernels; saves only the
    input currents."""

    @staticmethod
    def forward(ctx, seq, theta, leak, reset_zero, v_init, surrogate, population):  # type: ignore[override]
        seq4, theta2, v_init = _fold(seq, theta, v_init, population)
        out = _kernel("forward")(seq4, theta2, v_init, leak, reset_zero, population)
        ctx.save_for_backward(seq4, theta2)
        ctx.settings = (v_init, leak, reset_zero, surrogate, population)
        ctx.layout = (seq.shape, _channels_last(seq), theta.shape)
        return _unfold(out, *ctx.layout[:2])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        seq4, theta2 = ctx.saved_tensors
        v_init, leak, reset_zero, surrogate, population = ctx.settings
        seq_shape, channels_last, theta_shape = ctx.layout
        grad_out = _fold_like(grad_out, channels_last)
        need_theta = ctx.needs_input_grad[1]
        # a per-channel threshold's gradient is reduced per channel: inside the kernel that
        # split it into loop nests that store every step's state (3x slower); with the
        # threshold given per element the kernel stays one loop and torch reduces after it
        theta_in = (
            theta2.expand(seq4.shape[1:]).contiguous()
            if need_theta and theta2.numel() > 1
            else theta2
        )
        args = (seq4, theta_in, grad_out, v_init, leak, reset_zero, surrogate.family, surrogate.g,
                surrogate.absolute, surrogate.detach_reset, need_theta, population)  # fmt: skip
        try:
            grad_in, grad_theta = _kernel("backward")(*args)
        except Exception as error:  # the same BPTT, uncompiled (slower, same numbers)
            _give_up(error)
            grad_in, grad_theta = _backward(*args)
        if grad_theta is not None:
            grad_theta = grad_theta.sum_to_size(theta2.shape).view(theta_shape)
        return _unfold(grad_in, seq_shape, channels_last), grad_theta, None, None, None, None, None


def _give_up(error: Exception) -> None:
    """Record why compiling failed (the rest of the process runs eager) and warn once."""
    global _failure
    _failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    warnings.warn(
        f"the compiled runtime could not compile the neuron ({_failure[:200]}); "
        "running the eager neuron instead",
        RuntimeWarning,
        stacklevel=3,
    )


def compiled_dynamics(
    seq: torch.Tensor,
    theta: torch.Tensor,
    leak: float,
    reset_zero: bool,
    v_init: float | torch.Tensor,
    surrogate: Surrogate,
    needs_grad: bool,
    population: int = 1,
) -> torch.Tensor | None:
    """``theta * spikes`` ``[T, B, ...]`` by the compiled kernels (with the surrogate BPTT when
    ``needs_grad``), or None when compiling failed in this process (use the eager neuron).
    ``v_init``: a float, or one value per input and neuron ``[B, ...]`` (dithered neurons), or
    for a ``population`` of K members their K initial membranes ``[K]``: then the output is the
    members' mean, each member reading ``seq`` (no K-fold copy of the input)."""
    if _failure is not None:
        return None
    try:
        if needs_grad:
            return _CompiledIFDynamics.apply(seq, theta, leak, reset_zero, v_init, surrogate,
                                             population)  # fmt: skip
        seq4, theta2, v_init = _fold(seq, theta, v_init, population)
        out = _kernel("forward")(seq4, theta2, v_init, leak, reset_zero, population)
        return _unfold(out, seq.shape, _channels_last(seq))
    except Exception as error:  # no C++ compiler / Triton: the eager neuron computes the same
        _give_up(error)
        return None
