"""DLIF neurons (seed 003): gains 1 change nothing, gains scale the input, files round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.snn.dlif import DLIFNeuron, to_dlif
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn, save_snn
from tests.finetune_helpers import separable_npz, tiny_snn_file

T = 4


def _run(neuron: nn.Module, currents: torch.Tensor) -> torch.Tensor:
    neuron.timesteps = T
    return neuron(currents.flatten(0, 1)).view_as(currents)


@pytest.mark.parametrize("leak, reset", [(1.0, "subtract"), (0.9, "zero"), (0.8, "subtract")])
def test_dlif_with_unit_gains_equals_if_and_lif(leak, reset):
    torch.manual_seed(0)
    currents = torch.randn(T, 5, 3, 4, 4) * 2
    plain = IFNeuron(torch.tensor([0.8, 1.0, 1.3]), leak=leak, reset=reset, v_init=0.5)
    dlif = DLIFNeuron.from_neuron(plain, T)
    assert torch.equal(dlif.gain.detach(), torch.ones(T))
    for mode in ("bptt", "bptr", "ann"):
        plain.gradient_mode = dlif.gradient_mode = mode
        steps = 1 if mode == "ann" else T
        x = currents[:steps].clone().requires_grad_(True)
        x2 = currents[:steps].clone().requires_grad_(True)
        plain.timesteps = dlif.timesteps = steps
        if mode == "ann":
            out_plain, out_dlif = plain(x.flatten(0, 1)), dlif(x2.flatten(0, 1))
        else:
            out_plain, out_dlif = _run(plain, x), _run(dlif, x2)
        assert torch.equal(out_plain, out_dlif)
        (g1,) = torch.autograd.grad(out_plain.sum(), x)
        (g2,) = torch.autograd.grad(out_dlif.sum(), x2)
        assert torch.allclose(g1, g2)


def test_gains_scale_the_input_of_each_step():
    torch.manual_seed(1)
    currents = torch.rand(T, 6, 8) * 3
    gains = torch.tensor([0.5, 1.0, 2.0, 0.0])
    dlif = DLIFNeuron(1.0, T, leak=0.95)
    dlif.gain.data.copy_(gains)
    plain = IFNeuron(1.0, leak=0.95)
    expected = _run(plain, currents * gains.view(T, 1, 1))
    assert torch.equal(_run(dlif, currents), expected)
    out = _run(dlif, currents)
    (grad,) = torch.autograd.grad(out.sum(), dlif.gain)
    assert grad.shape == (T,) and grad[:3].abs().sum() > 0


def test_dlif_refuses_another_number_of_steps():
    dlif = DLIFNeuron(1.0, T)
    dlif.timesteps = T + 1
    with pytest.raises(ConvertSNNError, match="gains for T=4 but runs at T=5"):
        dlif(torch.rand((T + 1) * 2, 3))


def test_to_dlif_keeps_a_converted_model_unchanged_and_round_trips(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data, timesteps=T))
    torch.manual_seed(2)
    x = torch.rand(7, 3, 6, 6)
    before = snn(x)
    assert to_dlif(snn) == 2
    assert all(isinstance(n, DLIFNeuron) for n in snn.neurons())
    assert torch.equal(snn(x), before)
    for i, neuron in enumerate(snn.neurons()):
        neuron.gain.data = torch.linspace(0.5, 1.5, T) + 0.1 * i
    changed = snn(x)
    path = save_snn(snn, tmp_path / "dlif.safetensors")
    loaded = load_snn(path)
    assert all(type(n) is DLIFNeuron for n in loaded.neurons())
    assert torch.equal(loaded(x), changed)
    assert to_dlif(loaded) == 0


def test_dlif_in_a_network_with_ann_mode_uses_the_mean_gain():
    body = nn.Sequential(nn.Linear(4, 3), DLIFNeuron(1.0, T), nn.Linear(3, 2))
    snn = SpikingNetwork(body, T)
    body[1].gain.data = torch.tensor([2.0, 2.0, 1.0, 1.0])
    x = torch.rand(5, 4)
    with snn.gradient("ann"):
        out = snn(x)
    expected = body[2](torch.relu(1.5 * body[0](x)))
    assert torch.allclose(out, expected)
