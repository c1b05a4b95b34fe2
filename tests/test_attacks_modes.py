"""Gradient modes: parsing, seed 001's variants, the ANN proxy, the adaptive surrogate, EOT."""

import pytest
import torch
import torch.nn.functional as F

from convertsnn import convert
from convertsnn.attacks import PGD, SEED000_MODES, SEED001_MODES, ModelInMode, parse_gradient_mode
from convertsnn.attacks.adaptive_surrogate import AdaptiveSurrogate
from convertsnn.attacks.ensemble import expected_correct
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.encoding import parse_encoder


@pytest.fixture
def snn(tiny_resnet, images):
    return convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()


def input_gradient(snn, x, y, mode):
    attack = PGD(snn, 0.1, gradient_mode=mode)
    return attack.gradient(x, y)[0]


def test_parse_gradient_modes():
    assert str(parse_gradient_mode(None)) == "native"
    assert str(parse_gradient_mode("bptt")) == "bptt:triangle:1"
    assert str(parse_gradient_mode("BPTT:rect:0.25")) == "bptt:rect:0.25"
    assert str(parse_gradient_mode("adaptive")) == "adaptive:triangle:0.8"
    assert str(parse_gradient_mode("adaptive:sigmoid:1.5")) == "adaptive:sigmoid:1.5"
    assert str(parse_gradient_mode("bptt:sigmoid:20:detach")) == "bptt:sigmoid:20:detach"
    assert str(parse_gradient_mode("bptt:triangle:1:abs")) == "bptt:triangle:1:abs"
    assert str(parse_gradient_mode("adaptive:detach")) == "adaptive:triangle:0.8:detach"
    assert str(parse_gradient_mode("adaptive:rect:0.5:detach")) == "adaptive:rect:0.5:detach"
    assert not parse_gradient_mode("ann").exact and parse_gradient_mode("bptr").exact
    for bad in ("bptx", "ann:1", "adaptive:ste", "adaptive:triangle:-1", "bptt:boxcar",
                "bptt:rect:0", "bptt:triangle:-0.5", "bptt:sigmoid:detach:20"):  # fmt: skip
        with pytest.raises(ConvertSNNError):
            parse_gradient_mode(bad)


def test_seed001_has_19_variants_with_17_surrogates():
    assert len(SEED001_MODES) == 19 and len(set(SEED001_MODES)) == 19
    assert sum(m.startswith("bptt:") for m in SEED001_MODES) == 17
    assert "bptt:ste" in SEED001_MODES and {"bptr", "ann"} <= set(SEED001_MODES)


def test_every_mode_gives_gradients_and_restores_the_model(snn, images):
    y = snn(images).argmax(1)
    surrogates = [str(n.surrogate) for n in snn.neurons()]
    for mode in (*SEED001_MODES, *SEED000_MODES, "bptt:sigmoid:20:detach", "adaptive",
                 "adaptive:sigmoid:1:detach", "bptt:triangle:1:abs"):  # fmt: skip
        grad = input_gradient(snn, images, y, mode)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, mode
    assert snn.gradient_mode == "bptt"
    assert [str(n.surrogate) for n in snn.neurons()] == surrogates


def test_modes_need_a_spiking_network(images):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 10))
    with pytest.raises(ConvertSNNError, match="needs a SpikingNetwork"):
        PGD(model, 0.1, gradient_mode="bptr")(images, torch.zeros(32, dtype=torch.long))


def test_ann_mode_takes_proxy_gradients_but_judges_the_snn(snn, images):
    y = snn(images).argmax(1)
    ann = ModelInMode(snn, "ann")
    x = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(ann(x), y, reduction="sum"), x)
    grad, _, logits, _ = PGD(snn, 0.1, gradient_mode="ann").gradient(images, y)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert torch.allclose(logits, snn(images))  # the SNN's logits, not the proxy's
    assert not torch.allclose(logits, ann(images))


def test_adaptive_surrogate_reaches_neurons_a_narrow_surrogate_misses(snn, images):
    y = snn(images).argmax(1)
    narrow = input_gradient(snn, images, y, "bptt:rect:0.01")
    adaptive = input_gradient(snn, images, y, "adaptive:rect:0.8")
    zero = lambda g: (g.flatten(1) == 0).all(1).float().mean()  # noqa: E731
    assert zero(adaptive) == 0 and zero(narrow) > zero(adaptive)


def test_adaptive_statistics_follow_the_membrane(snn, images):
    neuron = next(snn.neurons())
    surrogate = AdaptiveSurrogate(neuron, "triangle", 0.5)
    neuron.timesteps = 2
    x = torch.randn(2, 5, requires_grad=True)
    for t in range(2):
        surrogate.spike(x[t])
    assert torch.allclose(surrogate.first[1], x[1].detach().abs())
    assert torch.equal(surrogate.second[1], torch.zeros(5))
    surrogate.spike(x[0] * 3)  # next pass, step 0: moving averages
    expected = 0.9 * x[0].abs() + 0.1 * 3 * x[0].abs()
    assert torch.allclose(surrogate.first[0], expected.detach())
    spikes = surrogate.spike(x[1])
    spikes.sum().backward()
    scale = (surrogate.first[1] + 1.5 * surrogate.second[1]) / 0.5
    expected_grad = (scale - x[1].abs()).clamp(min=0) / scale**2  # triangle of width scale
    assert torch.allclose(x.grad[1], expected_grad.detach(), atol=1e-6)


def test_eot_averages_gradients_of_a_stochastic_model(snn, images):
    snn.encoder = parse_encoder("poisson")
    y = snn(images).argmax(1)
    torch.manual_seed(0)
    one = PGD(snn, 0.1, eot=1).gradient(images, y)[0]
    torch.manual_seed(0)
    many = PGD(snn, 0.1, eot=8).gradient(images, y)[0]
    torch.manual_seed(1)
    many_again = PGD(snn, 0.1, eot=8).gradient(images, y)[0]
    spread = lambda a, b: (a - b).norm() / b.norm()  # noqa: E731
    assert spread(many, many_again) < spread(one, many_again)
    p = expected_correct(snn, images, y, draws=10)
    assert ((p > 0) & (p < 1)).any()  # an expectation over draws, not 0/1
