import pytest
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron


def run(neuron: IFNeuron, current: torch.Tensor, steps: int) -> torch.Tensor:
    """Constant input ``current`` [B, N] for ``steps`` steps; returns outputs [T, B, N]."""
    neuron.timesteps = steps
    seq = current.unsqueeze(0).expand(steps, *current.shape).flatten(0, 1)
    return neuron(seq).view(steps, *current.shape)


def test_if_rate_approximates_clipped_relu():
    neuron = IFNeuron(threshold=2.0, v_init=0.5)
    current = torch.linspace(-1, 3, 41).view(1, -1)
    rate = run(neuron, current, 200).mean(0)
    target = current.clamp(0, 2.0)
    assert (rate - target).abs().max() <= 2.0 / 200 + 1e-6


def test_outputs_are_threshold_scaled_spikes():
    neuron = IFNeuron(threshold=0.7)
    out = run(neuron, torch.rand(4, 5), 8)
    assert torch.isclose(out, torch.tensor(0.7)).logical_or(out == 0).all()


def test_reset_to_zero_differs_from_subtraction():
    current = torch.tensor([[0.75]])
    subtract = run(IFNeuron(1.0, reset="subtract", v_init=0.0), current, 8).mean()
    zero = run(IFNeuron(1.0, reset="zero", v_init=0.0), current, 8).mean()
    # subtraction keeps the residue: 6 spikes in 8 steps; reset to zero loses it: 4 spikes
    assert subtract.item() == pytest.approx(6 / 8)
    assert zero.item() == pytest.approx(4 / 8)


def test_leak_lowers_the_rate():
    current = torch.tensor([[0.3]])
    if_rate = run(IFNeuron(1.0, leak=1.0), current, 64).mean()
    lif_rate = run(IFNeuron(1.0, leak=0.8), current, 64).mean()
    assert lif_rate < if_rate


def test_v_init_is_a_fraction_of_threshold():
    out = run(IFNeuron(threshold=1.0, v_init=0.9), torch.tensor([[0.1]]), 1)
    assert out.item() == 1.0  # 0.9 + 0.1 reaches the threshold at the first step


def test_state_does_not_leak_between_calls():
    neuron = IFNeuron(1.0)
    x = torch.rand(2, 6)
    assert torch.equal(run(neuron, x, 4), run(neuron, x, 4))


def test_channel_wise_thresholds_broadcast_over_channels():
    neuron = IFNeuron(threshold=torch.tensor([1.0, 2.0]))
    neuron.timesteps = 100
    x = torch.full((100, 2, 3, 3), 0.5)  # T*B with B=1
    rate = neuron(x).view(100, 1, 2, 3, 3).mean(0)
    assert rate[0, 0].mean().item() == pytest.approx(0.5, abs=0.02)
    assert rate[0, 1].mean().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("mode", ["bptt", "bptr"])
def test_gradients_reach_the_input(mode):
    neuron = IFNeuron(1.0)
    neuron.gradient_mode = mode
    x = torch.rand(8 * 3, 5, requires_grad=True)
    neuron.timesteps = 8
    neuron(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_ann_mode_is_relu():
    neuron = IFNeuron(1.0)
    neuron.gradient_mode = "ann"
    x = torch.randn(10, 4)
    assert torch.equal(neuron(x), torch.relu(x))


def test_bad_settings_are_rejected():
    with pytest.raises(ConvertSNNError):
        IFNeuron(leak=1.5)
    with pytest.raises(ConvertSNNError):
        IFNeuron(reset="soft")
    neuron = IFNeuron()
    neuron.timesteps = 3
    with pytest.raises(ConvertSNNError):
        neuron(torch.rand(4, 2))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("leak", [1.0, 0.8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("surrogate", ["sigmoid:3", "sigmoid:3:abs", "rect:0.5:detach"])
def test_fused_dynamics_match_step_by_step_autograd(reset, leak, per_channel, surrogate):
    """The hand-written BPTT gives the same outputs and gradients as autograd through time,
    on both surrogate scales and with the reset detached."""
    torch.manual_seed(0)
    theta = torch.tensor([0.6, 1.1, 0.9]) if per_channel else 0.8
    neuron = IFNeuron(threshold=theta, leak=leak, reset=reset, v_init=0.3, surrogate=surrogate)
    neuron.timesteps = 6
    x = (torch.randn(6 * 4, 3, 5, 5) * 0.8).requires_grad_(True)
    weights = torch.randn(6 * 4, 3, 5, 5)

    fused = neuron(x)
    (fused * weights).sum().backward()
    fused_grads = x.grad.clone(), neuron.threshold.grad.clone()
    x.grad = None
    neuron.threshold.grad = None

    seq = x.view(6, 4, 3, 5, 5)
    reference = neuron.simulate(seq, neuron._theta(4), neuron.surrogate).flatten(0, 1)
    (reference * weights).sum().backward()
    assert torch.equal(fused, reference)
    assert torch.allclose(fused_grads[0], x.grad, atol=1e-5)
    assert torch.allclose(fused_grads[1], neuron.threshold.grad, atol=1e-4)


def _neuron_and_input(reset: str, leak: float, per_channel: bool, steps: int = 5):
    torch.manual_seed(1)
    theta = torch.tensor([0.6, 1.1, 0.9]) if per_channel else 0.8
    neuron = IFNeuron(threshold=theta, leak=leak, reset=reset, v_init=0.4)
    neuron.timesteps = steps
    return neuron, torch.randn(steps * 3, 3, 4, 4) * 0.9


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("leak", [1.0, 0.7])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lean_paths_give_identical_spikes(reset, leak, per_channel):
    """The in-place no-grad path, the BPTT path and the step-by-step reference agree exactly."""
    neuron, x = _neuron_and_input(reset, leak, per_channel)
    theta = neuron._theta(x.dim())
    reference = neuron.simulate(x.view(5, 3, 3, 4, 4), theta, neuron.surrogate).flatten(0, 1)
    with torch.no_grad():
        lean = neuron(x)
    bptt = neuron(x.clone().requires_grad_(True))
    neuron.gradient_mode = "bptr"
    bptr = neuron(x.clone().requires_grad_(True))
    assert (reference > 0).any() and (reference == 0).any()
    for out in (lean, bptt, bptr):
        assert torch.equal(out, reference)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_frozen_threshold_skips_only_the_threshold_gradient(reset, per_channel):
    """With the threshold frozen (attacks), the input gradient is unchanged and no threshold
    gradient is made; with only the threshold learning, its gradient is unchanged."""
    neuron, x = _neuron_and_input(reset, 0.9, per_channel)
    weights = torch.randn_like(x)
    x_in = x.clone().requires_grad_(True)
    (neuron(x_in) * weights).sum().backward()
    full_input, full_theta = x_in.grad, neuron.threshold.grad.clone()

    neuron.threshold.grad = None
    neuron.threshold.requires_grad_(False)
    x_in = x.clone().requires_grad_(True)
    (neuron(x_in) * weights).sum().backward()
    assert torch.allclose(x_in.grad, full_input, atol=1e-6)
    assert neuron.threshold.grad is None

    neuron.threshold.requires_grad_(True)
    (neuron(x) * weights).sum().backward()
    assert torch.allclose(neuron.threshold.grad, full_theta, atol=1e-5)
    assert full_theta.abs().sum() > 0


def test_no_grad_path_keeps_no_autograd_graph():
    neuron, x = _neuron_and_input("subtract", 1.0, False)
    out = neuron(x)  # input without grad, threshold frozen: the in-place path
    neuron.threshold.requires_grad_(False)
    assert neuron(x).grad_fn is None
    assert out.grad_fn is not None  # the threshold still learns when it requires grad


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_detached_reset_drops_the_reset_path_only(reset):
    torch.manual_seed(0)
    current = torch.rand(5 * 3, 4)
    grads = {}
    for spec in ("sigmoid:4", "sigmoid:4:detach"):
        neuron = IFNeuron(threshold=0.7, reset=reset, surrogate=spec)
        neuron.timesteps = 5
        x = current.clone().requires_grad_(True)
        out = neuron(x)
        out.sum().backward()
        grads[spec] = (out.detach(), x.grad)
    attached, detached = grads["sigmoid:4"], grads["sigmoid:4:detach"]
    assert torch.equal(attached[0], detached[0])  # the forward pass is the same
    assert not torch.allclose(attached[1], detached[1])
    # at the last step nothing comes after the reset: the gradients agree there
    assert torch.allclose(attached[1][-3:], detached[1][-3:])
