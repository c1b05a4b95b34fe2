"""Burst neurons (up to K spikes per step), the optional hardware-cost neuron variant (issue 17)."""

import pytest
import torch

from convertsnn.convert import convert
from convertsnn.convert.calibration.mse import best_threshold
from convertsnn.errors import ConvertSNNError
from convertsnn.export.nir import to_nir
from convertsnn.export.onnx import export_onnx, onnx_logits
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn, read_document, save_snn
from convertsnn.snn.surrogate import parse_surrogate
from tests.cli_helpers import assert_one_line_error, convert_command, run_cli
from tests.test_calibration import loader, trained_batchnorm
from tests.test_deep_conversion import residual_net


def run(neuron: IFNeuron, currents: list[float]) -> list[float]:
    neuron.timesteps = len(currents)
    with torch.no_grad():
        return neuron(torch.tensor(currents).view(-1, 1)).view(-1).tolist()


def test_burst_neurons_send_the_membrane_on_at_once():
    currents = [2.6, 0.0, 3.0, 0.2]  # membrane from 0.5: 3.1, 0.1, 3.1, 0.3 with K >= 3
    assert run(IFNeuron(1.0, burst=3), currents) == [3.0, 0.0, 3.0, 0.0]
    # K = 2: membrane 3.1 -> 2 spikes (capped), 1.1 -> 1, 3.1 -> 2 (capped), 1.3 -> 1
    assert run(IFNeuron(1.0, burst=2), currents) == [2.0, 1.0, 2.0, 1.0]
    assert run(IFNeuron(1.0), currents) == [1.0, 1.0, 1.0, 1.0]  # binary: one per step
    # each spike is worth theta, and the membrane drops by every spike sent
    assert run(IFNeuron(0.5, burst=4), [1.3, 0.0]) == [1.5, 0.0]  # 1.55 / 0.5 -> 3 spikes


def test_k_1_is_the_binary_neuron_and_small_inputs_never_burst():
    assert IFNeuron(1.0, burst=1).config() == IFNeuron(1.0).config()  # files as before
    torch.manual_seed(0)
    x = torch.rand(8 * 4, 6) * 0.9  # input below theta: the membrane stays below 2 theta
    theta = torch.rand(6) + 1.0
    binary, burst = IFNeuron(theta), IFNeuron(theta, burst=4)
    binary.timesteps = burst.timesteps = 8
    with torch.no_grad():
        assert torch.equal(binary(x), burst(x))
    for k in (1, 3):  # the autograd paths give the same spikes as the fast one
        neuron = IFNeuron(theta, burst=k)
        neuron.timesteps = 8
        x = torch.randn(8 * 4, 6) * 3
        with torch.no_grad():
            fast = neuron(x)
        assert torch.equal(neuron(x.clone().requires_grad_(True)).detach(), fast)
        neuron.surrogate = _PerStep(neuron.surrogate)  # a per-step surrogate: simulate()
        assert torch.equal(neuron(x.clone().requires_grad_(True)).detach(), fast)


class _PerStep:
    """A surrogate object that is not a Surrogate, so the neuron runs :meth:`simulate`."""

    detach_reset = False

    def __init__(self, surrogate) -> None:
        self.surrogate = surrogate

    def spike(self, x, theta):
        return self.surrogate.spike(x, theta)


def test_burst_gradient_is_the_surrogate_around_each_threshold():
    torch.manual_seed(2)
    burst, steps = 3, 6
    theta = (torch.rand(4) + 0.5).requires_grad_(True)
    x = (torch.randn(steps * 5, 4) * 2).requires_grad_(True)
    neuron = IFNeuron(theta.detach(), burst=burst, surrogate="sigmoid:4")
    neuron.threshold.data = theta.detach().clone()
    neuron.timesteps = steps
    out = neuron(x)
    weights = torch.randn_like(out)
    grad_x, grad_theta = torch.autograd.grad((out * weights).sum(), (x, neuron.threshold))
    # reference: autograd through the sum of K Heaviside steps, each with the surrogate
    surrogate = parse_surrogate("sigmoid:4")
    xr = x.detach().clone().requires_grad_(True)
    u, outs = 0.5 * theta, []
    for current in xr.view(steps, 5, 4):
        u = u + current
        s = sum(surrogate.spike(u - k * theta, theta) for k in range(1, burst + 1))
        outs.append(s * theta)
        u = u - s * theta
    reference = torch.stack(outs).flatten(0, 1)
    assert torch.allclose(reference, out.detach())
    ref_x, ref_theta = torch.autograd.grad((reference * weights).sum(), (xr, theta))
    assert torch.allclose(grad_x, ref_x, atol=1e-5)
    assert torch.allclose(grad_theta, ref_theta, atol=1e-4)
    assert out.detach().div(neuron.threshold.detach()).round().max() == burst


def test_mse_thresholds_use_the_finer_levels_of_burst_neurons():
    torch.manual_seed(0)
    values = torch.rand(5000) * 4
    binary = best_threshold(values, 4.0, 4, 0.5, 100)
    burst = best_threshold(values, 4.0, 4, 0.5, 100, burst=2)
    assert burst < binary  # up to 2 spikes a step: the same range with half the threshold


def assert_variant_stored_exported_and_refused_by_nir(
    snn, plain, data: torch.Tensor, tmp_path, setting: str, value: int, nir_error: str
) -> None:
    """A neuron variant's SNN ``snn`` of the network of ``plain``: it differs from ``plain``,
    its neurons' ``setting`` survives a save and load, ``plain``'s file is written without it,
    the ONNX export agrees with it and the NIR export refuses it (``nir_error``)."""
    snn.metadata["input_size"] = list(data.shape[1:])
    with torch.no_grad():
        assert not torch.equal(snn(data), plain(data))
    loaded = load_snn(save_snn(snn, tmp_path / f"{setting}.safetensors"))
    assert all(getattr(n, setting) == value for n in loaded.neurons())
    with torch.no_grad():
        assert torch.equal(loaded(data), snn(data))
    document, _ = read_document(save_snn(plain, tmp_path / "plain.safetensors"))
    assert setting not in str(document["graph"])  # plain files are written as before
    onnx = export_onnx(snn, tmp_path / f"{setting}.onnx")
    with torch.no_grad():
        assert (onnx_logits(onnx, data[:8]) - snn(data[:8])).abs().max() <= 1e-4
    with pytest.raises(ConvertSNNError, match=nir_error):
        to_nir(snn)


def test_burst_conversion_is_stored_exported_to_onnx_and_refused_by_nir(tmp_path):
    torch.manual_seed(1)
    data = torch.rand(64, 3, 8, 8)
    model = trained_batchnorm(residual_net(blocks=1), data)
    binary = convert(model, loader(data), timesteps=4, calibration="max")
    snn = convert(model, loader(data), timesteps=4, calibration="max", burst=3)
    assert "up to 3 spikes" in snn.metadata["conversion"]["burst_spikes"]
    nir_error = r"burst neurons \(several spikes per step\)"
    assert_variant_stored_exported_and_refused_by_nir(
        snn, binary, data, tmp_path, "burst", 3, nir_error
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"burst": 0}, "an integer from 1 (binary) to 255, got 0"),
        ({"burst": 2.5}, "got 2.5"),
        ({"burst": True}, "got True"),
        ({"burst": 256}, "got 256"),
        ({"burst": 2, "reset": "zero"}, "burst spikes need reset by subtraction"),
        ({"burst": 2, "signed": True}, "burst and signed spikes cannot be combined"),
    ],
)
def test_bad_burst_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConvertSNNError) as error:
        IFNeuron(1.0, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
    ann = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ConvertSNNError, match="burst"):
        convert(ann, None, 4, "bnmse", **kwargs)


def test_cli_convert_burst(tmp_path):
    common, out = convert_command(tmp_path)
    result = run_cli(*common, "--burst", "2")
    assert result.exit_code == 0, result.output
    assert all(n.burst == 2 for n in load_snn(out).neurons())
    assert_one_line_error(run_cli(*common, "--burst", "0"), "burst is the most spikes per step")
    assert_one_line_error(run_cli(*common, "--burst", "2", "--signed-spikes"), "cannot be combined")
    assert_one_line_error(
        run_cli(*common, "--burst", "3", "--reset", "zero"), "need reset by subtraction"
    )
