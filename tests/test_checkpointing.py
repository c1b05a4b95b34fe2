import math

import pytest
import torch
import torch.nn.functional as F

from convertsnn import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.checkpointing import checkpointed_body
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron


def _gradients(snn: SpikingNetwork, images: torch.Tensor, labels: torch.Tensor):
    snn.zero_grad(set_to_none=True)
    x = images.clone().requires_grad_(True)
    logits = snn(x)
    F.cross_entropy(logits, labels).backward()
    return logits.detach(), x.grad, {n: p.grad.clone() for n, p in snn.named_parameters()}


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_checkpointing_gives_the_same_outputs_and_gradients(tiny_resnet, images, reset):
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max", reset=reset)
    labels = torch.arange(len(images)) % 10
    logits, input_grad, grads = _gradients(snn.train(), images, labels)
    snn.memory = "checkpoint"
    assert snn.memory == "checkpoint"
    assert set(snn.state_dict()) == set(dict(snn.named_parameters())) | {
        k for k, _ in snn.named_buffers()
    }  # the segments add no entries to the model file
    logits_c, input_grad_c, grads_c = _gradients(snn, images, labels)
    assert torch.equal(logits_c, logits)
    assert torch.allclose(input_grad_c, input_grad, atol=1e-6)
    assert grads_c.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grads_c[name], grad, atol=1e-5, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in grads.values())
    with torch.no_grad():
        assert torch.equal(snn(images), logits)
    snn.memory = "full"
    assert snn.memory == "full"


def test_segments_hold_about_sqrt_n_spiking_layers(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=2, calibration="max")
    neurons = len(list(snn.neurons()))
    per_segment = math.ceil(math.sqrt(neurons))
    segments = list(checkpointed_body(snn.body).children())
    # full segments, then one with the remaining neurons and/or the readout
    assert len(segments) == neurons // per_segment + 1
    counts = [sum(isinstance(m, IFNeuron) for m in s.modules()) for s in segments]
    assert counts[:-1] == [per_segment] * (len(segments) - 1) and sum(counts) == neurons


def test_bad_memory_settings_are_rejected(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=2, calibration="max")
    with pytest.raises(ConvertSNNError, match="memory mode"):
        snn.memory = "bf8"
    plain = SpikingNetwork(torch.nn.Sequential(torch.nn.Flatten()), timesteps=2)
    with pytest.raises(ConvertSNNError, match="traced body"):
        plain.memory = "checkpoint"
