"""Readout calibration (``readoutcal:BASE``): the output layer refitted to the ANN's logits on
the SNN's own features, with the readout window chosen for it (issue 17)."""

import pytest
import torch
from torch import nn

from convertsnn.convert import convert
from convertsnn.convert.calibration import get_calibration
from convertsnn.convert.calibration.readout_calibration import output_layer
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.robustness import source_ann_view
from convertsnn.objectives.distill import frozen_source_ann, weight_calibration
from convertsnn.snn.serialize import load_snn, save_snn
from tests.test_calibration import loader, trained_batchnorm
from tests.test_deep_conversion import residual_net


@pytest.fixture
def data() -> torch.Tensor:
    return torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def head_input(snn, x: torch.Tensor) -> torch.Tensor:
    """The output layer's input at every step, ``[T, B, F]``."""
    head = output_layer(snn.body)
    seen = []
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        snn.forward_sequence(x)
    hook.remove()
    return seen[0].view(snn.timesteps, len(x), -1)


def classifying(model: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    """``model`` with its linear head sharpened and centred on ``x``, so that its classes vary."""
    head = model[-1]
    with torch.no_grad():
        head.weight *= 10
        head.bias -= model(x).mean(0)
    assert model(x).argmax(1).bincount().min() > len(x) // 4
    return model


def test_readoutcal_refits_the_output_layer_to_the_ann_logits(data, tmp_path):
    model = classifying(trained_batchnorm(residual_net(blocks=2), data), data)
    base = convert(model, loader(data), timesteps=4, calibration="mse")
    snn = convert(model, loader(data), timesteps=4, calibration="readoutcal:mse")
    record = snn.metadata["readout_calibration"]
    scores = record["agreement_with_ann"]
    assert list(scores) == [
        f"{kind}, delay {d}" for kind in ("converted", "refit") for d in range(4)
    ]
    assert record["images"] == 64 and record["folds"] == 4
    assert record["chosen"] == max(scores, key=scores.get)
    assert record["chosen"].startswith("refit")
    delay = int(record["chosen"][-1])
    assert snn.readout == record["readout"] == ("mean" if delay == 0 else f"delay:{delay}")
    # the same spiking layers as BASE; only the output layer changed, to the ridge solution
    assert all(
        torch.equal(a, b)
        for a, b in zip(snn.thresholds.values(), base.thresholds.values(), strict=True)
    )
    x = head_input(snn, data)[delay:].mean(0).double()
    assert torch.equal(x, head_input(base, data)[delay:].mean(0).double())
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    head, old = output_layer(snn.body), output_layer(base.body)
    weights = torch.cat([head.weight.T, head.bias[None]]).detach().double()
    prior = torch.cat([old.weight.T, old.bias[None]]).detach().double()
    with torch.no_grad():
        logits = model(data).double()
    ridge = get_calibration("readoutcal").ridge
    residual = x.T @ (x @ weights - logits) + ridge * (weights - prior)  # the normal equations
    assert residual.abs().max() < 1e-3 * (x.T @ logits).abs().max()
    with torch.no_grad():
        agree = [(net(data).argmax(1) == logits.argmax(1)).float().mean() for net in (snn, base)]
    assert agree[0] > agree[1]
    loaded = load_snn(save_snn(snn, tmp_path / "readoutcal.safetensors"))
    assert loaded.readout == snn.readout
    with torch.no_grad():
        assert torch.equal(loaded(data), snn(data))
    # the refitted classifier leads back to no ANN: no ANN row, no teacher
    with pytest.warns(UserWarning, match="no ANN row.*calibration readoutcal"):
        assert source_ann_view(snn) is None
    with pytest.raises(ConvertSNNError, match="calibration readoutcal"):
        frozen_source_ann(snn)
    default_base = get_calibration("biascal:mse:channel=1,scale=0.7")
    assert str(get_calibration("readoutcal")) == f"readoutcal:{default_base}"


def test_readoutcal_keeps_the_converted_classifier_when_it_agrees_best(data):
    model = classifying(trained_batchnorm(residual_net(blocks=1), data), data)
    snn = convert(model, loader(data), timesteps=3, calibration="mse")
    head = output_layer(snn.body)
    before = [p.detach().clone() for p in (head.weight, head.bias)]
    # features on which the converted classifier gives the ANN's logits exactly: no refit
    # agrees more, and ties go to the converted classifier and its readout
    features = torch.rand(1, 64, head.in_features).expand(3, -1, -1).double()
    with torch.no_grad():
        logits = head(features[0].float())
    get_calibration("readoutcal").refit(snn, head, features, logits)
    record = snn.metadata["readout_calibration"]
    assert set(record["agreement_with_ann"].values()) == {1.0}
    assert record["chosen"] == "converted, delay 0"
    assert snn.readout == "mean" and weight_calibration(snn) is None
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])


class ConvHead(nn.Module):
    """A network whose output is a flattened convolution, not a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 10, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(1)


def test_readoutcal_names_an_output_it_cannot_refit(data):
    with pytest.raises(ConvertSNNError) as error:
        convert(ConvHead().eval(), loader(data), timesteps=2, calibration="readoutcal:mse")
    message = str(error.value)
    assert "node 'flatten'" in message and "delay:biascal:mse" in message and "\n" not in message
    with pytest.raises(ConvertSNNError, match="at least 4 calibration images"):
        convert(
            residual_net(blocks=1).eval(),
            loader(data[:3]),
            timesteps=2,
            calibration="readoutcal:mse",
        )


@pytest.mark.parametrize("variant", [{"population": 2}, {"burst": 2}, {"signed": True}])
def test_readoutcal_composes_with_the_neuron_variants(data, variant):
    model = classifying(trained_batchnorm(residual_net(blocks=1), data), data)
    snn = convert(model, loader(data), timesteps=3, calibration="readoutcal:mse", **variant)
    record = snn.metadata["readout_calibration"]
    scores = record["agreement_with_ann"]
    assert record["chosen"] == max(scores, key=scores.get)
    assert record["chosen"].startswith("refit") and snn.readout == record["readout"]
    assert weight_calibration(snn) == "readoutcal"


def test_readoutcal_refits_the_body_that_auto_chose(data):
    model = classifying(trained_batchnorm(residual_net(blocks=2), data), data)
    snn = convert(model, loader(data), timesteps=4, calibration="readoutcal:auto:mse+channelwise")
    assert "auto_calibration" in snn.metadata
    record = snn.metadata["readout_calibration"]
    assert record["chosen"].startswith("refit")
    delay = int(record["chosen"][-1])
    x = head_input(snn, data)[delay:].mean(0)
    with torch.no_grad():  # the classifier of the body auto kept is the refitted one
        logits = model(data)
        refit = (x @ output_layer(snn.body).weight.T + output_layer(snn.body).bias) - logits
        converted = convert(model, loader(data), timesteps=4, calibration="auto:mse+channelwise")
        kept = output_layer(converted.body)
        before = (head_input(converted, data)[delay:].mean(0) @ kept.weight.T + kept.bias) - logits
    assert refit.pow(2).mean() < before.pow(2).mean()
