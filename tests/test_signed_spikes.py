"""Signed (ternary) spikes, the optional hardware-cost neuron variant (issue 17)."""

import pytest
import torch

from convertsnn.convert import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.export.nir import to_nir
from convertsnn.export.onnx import export_onnx, onnx_logits
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn, read_document, save_snn
from tests.test_calibration import loader, trained_batchnorm
from tests.test_deep_conversion import residual_net


def run(neuron: IFNeuron, currents: list[float]) -> torch.Tensor:
    neuron.timesteps = len(currents)
    with torch.no_grad():
        return neuron(torch.tensor(currents).view(-1, 1)).view(-1)


def test_a_negative_spike_takes_back_over_firing():
    currents = [1.0, -1.0, 0.0, 0.0]  # net input 0: an early spike is one too many
    assert run(IFNeuron(1.0), currents).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert run(IFNeuron(1.0, signed=True), currents).tolist() == [1.0, -1.0, 0.0, 0.0]
    # no negative spike without a positive one before it: the count stays >= 0
    assert run(IFNeuron(1.0, signed=True), [-1.0, -1.0, 2.0, 0.0]).tolist() == [0, 0, 0, 0]


def test_signed_dynamics_agree_with_and_without_gradients():
    torch.manual_seed(0)
    neuron = IFNeuron(torch.rand(5) + 0.5, signed=True)
    neuron.timesteps = 16
    x = torch.randn(16 * 3, 5)
    with torch.no_grad():
        fast = neuron(x)
    xg = x.clone().requires_grad_(True)
    slow = neuron(xg)
    assert torch.equal(fast, slow.detach())
    assert (fast < 0).any() and (fast.view(16, 3, 5).cumsum(0) >= -1e-6).all()
    slow.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ConvertSNNError, match="signed spikes need reset by subtraction"):
        IFNeuron(1.0, reset="zero", signed=True)


def test_signed_conversion_is_stored_exported_to_onnx_and_refused_by_nir(tmp_path):
    torch.manual_seed(1)
    data = torch.rand(64, 3, 8, 8)
    model = trained_batchnorm(residual_net(blocks=1), data)
    binary = convert(model, loader(data), timesteps=4, calibration="max")
    snn = convert(model, loader(data), timesteps=4, calibration="max", signed=True)
    snn.metadata["input_size"] = [3, 8, 8]
    assert "signed_spikes" in snn.metadata["conversion"]
    with torch.no_grad():
        assert not torch.equal(snn(data), binary(data))
    path = save_snn(snn, tmp_path / "signed.safetensors")
    loaded = load_snn(path)
    assert all(n.signed for n in loaded.neurons())
    with torch.no_grad():
        assert torch.equal(loaded(data), snn(data))
    # files of binary neurons are written as before: no "signed" key
    document, _ = read_document(save_snn(binary, tmp_path / "binary.safetensors"))
    assert "signed" not in str(document["graph"])
    onnx = export_onnx(snn, tmp_path / "signed.onnx")
    with torch.no_grad():
        assert (onnx_logits(onnx, data[:8]) - snn(data[:8])).abs().max() <= 1e-4
    with pytest.raises(ConvertSNNError, match=r"signed \(ternary\) spikes have no NIR node"):
        to_nir(snn)
