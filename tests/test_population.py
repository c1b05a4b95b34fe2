"""Populations of K binary member neurons per unit, the optional hardware-cost variant that
binary-spike hardware can run (issues 15 and 17)."""

import pytest
import torch

from convertsnn.convert import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.compiled import member_mean
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn
from tests.cli_helpers import assert_one_line_error, convert_command, run_cli
from tests.test_burst_spikes import _PerStep, assert_variant_stored_exported_and_refused_by_nir
from tests.test_calibration import loader, trained_batchnorm
from tests.test_deep_conversion import residual_net


def members_one_by_one(theta, x: torch.Tensor, k: int, steps: int, **kwargs) -> torch.Tensor:
    """The mean output of K single neurons started at ``(j + 1/2) / K * theta``, run apart."""
    outs = []
    for j in range(k):
        neuron = IFNeuron(theta, v_init=(j + 0.5) / k, **kwargs)
        neuron.timesteps = steps
        outs.append(neuron(x))
    return member_mean(outs)


def test_a_population_rounds_a_constant_input_to_k_times_t_levels():
    steps, k, theta = 8, 4, 1.5
    x = torch.linspace(-0.2, 1.8, 401)  # per-step currents, below 0 and above theta included
    neuron = IFNeuron(theta, population=k)
    neuron.timesteps = steps
    with torch.no_grad():
        out = neuron(x.expand(steps, -1).reshape(-1)).view(steps, -1)
    count = out.sum(0) * k / theta  # spikes of all K members over the T steps
    # Hermite's identity: sum_j floor(y + (j + 1/2) / K) = floor(K y + 1/2), y = x T / theta
    expected = torch.floor(x * steps * k / theta + 0.5).clamp(0, k * steps)
    assert torch.equal(count.round(), expected)
    assert torch.allclose(count, expected, atol=1e-4)
    assert len(expected.unique()) == k * steps + 1  # K T + 1 levels, one neuron has T + 1


def test_members_are_independent_binary_neurons_on_every_path():
    torch.manual_seed(0)
    steps, k = 6, 3
    theta = torch.rand(5) + 0.5
    x = torch.randn(steps * 4, 5)
    neuron = IFNeuron(theta, population=k, surrogate="sigmoid:4")
    neuron.timesteps = steps
    with torch.no_grad():
        fast = neuron(x)
        assert torch.equal(fast, members_one_by_one(theta, x, k, steps))
    assert set((fast * k / theta).round().unique().tolist()) <= set(range(k + 1))
    weights = torch.randn_like(fast)
    grads = []
    for runtime, surrogate in [("eager", None), ("compiled", None), ("eager", "per-step")]:
        neuron.runtime = runtime
        if surrogate:
            neuron.surrogate = _PerStep(neuron.surrogate)  # autograd through simulate()
        xg = x.clone().requires_grad_(True)
        out = neuron(xg)
        assert torch.equal(out.detach(), fast)
        grads.append(torch.autograd.grad((out * weights).sum(), (xg, neuron.threshold)))
    xr = x.clone().requires_grad_(True)
    thetar = theta.clone().requires_grad_(True)
    reference = members_one_by_one(thetar, xr, k, steps, surrogate="sigmoid:4")
    ref = torch.autograd.grad((reference * weights).sum(), (xr,))[0]
    for grad_x, grad_theta in grads:
        assert torch.allclose(grad_x, ref, atol=1e-5)
        assert torch.allclose(grad_theta, grads[0][1], atol=1e-4)
    neuron.gradient_mode = "bptr"  # the rate gradient sees the members too
    assert torch.equal(neuron(x.clone().requires_grad_(True)).detach(), fast)


def test_mse_thresholds_of_a_population_are_those_of_k_times_t_steps():
    torch.manual_seed(3)
    data = torch.rand(64, 3, 8, 8)
    model = trained_batchnorm(residual_net(blocks=1), data)
    population = convert(model, loader(data), timesteps=2, calibration="mse", population=4)
    single = convert(model, loader(data), timesteps=8, calibration="mse")
    assert population.thresholds.keys() == single.thresholds.keys()
    for name, theta in population.thresholds.items():
        assert torch.equal(theta, single.thresholds[name])


def test_population_conversion_is_stored_exported_to_onnx_and_refused_by_nir(tmp_path):
    torch.manual_seed(1)
    data = torch.rand(64, 3, 8, 8)
    model = trained_batchnorm(residual_net(blocks=1), data)
    single = convert(model, loader(data), timesteps=4, calibration="max")
    snn = convert(model, loader(data), timesteps=4, calibration="max", population=3)
    assert "3 binary neurons per unit" in snn.metadata["conversion"]["population"]
    nir_error = "population of member neurons"
    assert_variant_stored_exported_and_refused_by_nir(
        snn, single, data, tmp_path, "population", 3, nir_error
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"population": 0}, "an integer from 1 (a single neuron) to 64, got 0"),
        ({"population": 2.0}, "got 2.0"),
        ({"population": True}, "got True"),
        ({"population": 65}, "got 65"),
        ({"population": 2, "reset": "zero"}, "cannot have reset to zero"),
        ({"population": 2, "burst": 2}, "cannot have burst spikes"),
        ({"population": 2, "signed": True}, "cannot have signed spikes"),
        ({"population": 2, "dither": 0.1}, "cannot have a dither"),
        ({"population": 2, "v_init": 0.25}, "cannot have v_init 0.25"),
    ],
)
def test_bad_population_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConvertSNNError) as error:
        IFNeuron(1.0, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
    ann = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ConvertSNNError, match=r"population|burst|signed"):
        convert(ann, None, 4, "bnmse", **kwargs)


def test_offset_calibration_is_refused_for_populations():
    torch.manual_seed(0)
    data = torch.rand(32, 3, 8, 8)
    model = trained_batchnorm(residual_net(blocks=1), data)
    with pytest.raises(ConvertSNNError, match="population members start at fixed"):
        convert(model, loader(data), timesteps=4, calibration="offset:max", population=2)


def test_cli_convert_population(tmp_path):
    common, out = convert_command(tmp_path)
    result = run_cli(*common, "--population", "2")
    assert result.exit_code == 0, result.output
    assert "population 2 (a hardware-cost variant)" in result.output
    assert all(n.population == 2 for n in load_snn(out).neurons())
    assert_one_line_error(run_cli(*common, "--population", "0"), "member neurons per unit")
    assert_one_line_error(run_cli(*common, "--population", "2", "--burst", "2"), "burst spikes")
