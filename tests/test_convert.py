import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn import convert
from convertsnn.convert import prepare_ann
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.neurons import IFNeuron


def loader(x: torch.Tensor, batch: int = 16):
    return [(x[i : i + batch], torch.zeros(len(x[i : i + batch]))) for i in range(0, len(x), batch)]


def test_prepare_ann_keeps_the_function_and_folds_batchnorm(tiny_resnet, images):
    gm = prepare_ann(tiny_resnet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    with torch.no_grad():
        assert torch.allclose(gm(images), tiny_resnet(images), atol=1e-5)


def test_functional_and_method_relus_become_neurons(tiny_resnet, images):
    snn = convert(tiny_resnet, loader(images), timesteps=4, calibration="max")
    # F.relu in the stem, torch.relu in the block, .relu() after the add
    assert len(list(snn.neurons())) == 3
    assert all(isinstance(n, IFNeuron) for n in snn.neurons())


@pytest.mark.parametrize("calibration", ["max", "percentile:99.9"])
def test_snn_logits_approach_ann_logits_as_t_grows(tiny_resnet, images, calibration):
    snn = convert(tiny_resnet, loader(images), timesteps=8, calibration=calibration)
    with torch.no_grad():
        reference = tiny_resnet(images)
        errors = {}
        for steps in (8, 256):
            snn.timesteps = steps
            errors[steps] = (snn(images) - reference).abs().mean().item()
    assert errors[256] < errors[8] / 4


def test_fidelity_on_a_plain_cnn():
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(6 * 5 * 5, 20), nn.ReLU(), nn.Linear(20, 5),
    ).eval()  # fmt: skip
    x = torch.rand(64, 1, 12, 12)
    snn = convert(cnn, loader(x), calibration="max")
    with torch.no_grad():
        reference = cnn(x)
        snn.timesteps = 8
        err8 = (snn(x) - reference).abs().max().item()
        snn.timesteps = 256
        err256 = (snn(x) - reference).abs().max().item()
    assert err256 < err8 / 4


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return (y * torch.sigmoid(y.mean((2, 3), keepdim=True))).mean((2, 3))


class WithGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x)).flatten(1)


class WithTopk(nn.Module):
    def forward(self, x):
        return torch.relu(x).flatten(1).topk(3).values


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (WithGelu(), "node 'act' (module GELU): GELU is not a ReLU"),
        (Gated(), "Sigmoid is not a ReLU"),
        (WithTopk(), "(method topk): this op is not supported"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU()), "LeakyReLU is not a ReLU"),
    ],
)
def test_unsupported_ops_give_one_line_errors(model, message):
    with pytest.raises(ConvertSNNError) as err:
        prepare_ann(model)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_activation_products_are_refused():
    class Product(nn.Module):
        def forward(self, x):
            a = torch.relu(x)
            return (a * a).flatten(1)

    with pytest.raises(ConvertSNNError, match="multiplies or divides two activations"):
        prepare_ann(Product())


def test_model_without_relu_is_refused():
    with pytest.raises(ConvertSNNError, match="no ReLU"):
        prepare_ann(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_missing_calibration_data_and_bad_settings(tiny_resnet, images):
    with pytest.raises(ConvertSNNError, match="--calib"):
        convert(tiny_resnet, None, calibration="max")
    with pytest.raises(ConvertSNNError, match="unknown calibration"):
        convert(tiny_resnet, loader(images), calibration="bogus")
    with pytest.raises(ConvertSNNError, match="unknown neuron"):
        convert(tiny_resnet, loader(images), neuron="izhikevich")
    with pytest.raises(ConvertSNNError, match="leak"):
        convert(tiny_resnet, loader(images), neuron="lif", leak=1.0)


def test_lif_conversion_uses_the_leak(tiny_resnet, images):
    snn = convert(tiny_resnet, loader(images), neuron="lif", leak=0.9, calibration="max")
    assert {n.leak for n in snn.neurons()} == {0.9}
