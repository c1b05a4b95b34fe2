"""Conversion of deep and channels-last networks without training (issue 17): data-free
statistics through residual sums and layout ops, T-aware data-free thresholds, initial-membrane
(offset-spike) calibration, the ``auto`` choice, and the deeper CIFAR ResNet factories."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.convert import convert, prepare_ann
from convertsnn.convert.calibration import get_calibration
from convertsnn.convert.calibration.offset import V_INIT_GRID
from convertsnn.convert.graph import activation_names
from convertsnn.errors import ConvertSNNError
from convertsnn.models import create_model, list_models
from convertsnn.snn.serialize import load_snn, save_snn
from tests.test_calibration import loader, trained_batchnorm


class Block(nn.Module):
    """A CIFAR BasicBlock: conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


def residual_net(blocks: int = 3, width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[Block(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3),
    )  # fmt: skip


class ChannelsLast(nn.Module):
    """A tf2onnx-style tail: NCHW conv, then permute to NHWC, a linear layer mixing the
    channels at every pixel (a 1x1 conv), and a flatten of the channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.mix = nn.Linear(6, 5)
        self.fc = nn.Linear(4 * 4 * 5, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).permute(0, 2, 3, 1)
        x = torch.flatten(F.relu(self.mix(x)), 1)
        return self.out(F.relu(self.fc(x)))


class ChannelsFirst(nn.Module):
    """:class:`ChannelsLast` computed in NCHW: the same function, the same statistics."""

    def __init__(self, nhwc: ChannelsLast) -> None:
        super().__init__()
        self.conv, self.bn, self.out = nhwc.conv, nhwc.bn, nhwc.out
        self.mix = nn.Conv2d(6, 5, 1)
        self.mix.weight.data = nhwc.mix.weight.data.view(5, 6, 1, 1).clone()
        self.mix.bias.data = nhwc.mix.bias.data.clone()
        self.fc = nn.Linear(80, 7)
        weight = nhwc.fc.weight.data.view(7, 4, 4, 5).permute(0, 3, 1, 2)  # (h, w, c) -> (c, h, w)
        self.fc.weight.data = weight.reshape(7, 80).clone()
        self.fc.bias.data = nhwc.fc.bias.data.clone()

    def forward(self, x):
        x = F.relu(self.mix(F.relu(self.bn(self.conv(x)))))
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


@pytest.fixture
def data() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(64, 3, 8, 8)


def test_bnstats_through_residual_sums_matches_observed_thresholds(data):
    model = trained_batchnorm(residual_net(), data)
    free = convert(model, None, calibration="bnstats")
    observed = convert(model, loader(data), calibration="percentile:99.9")
    names = list(free.thresholds)
    assert len(names) == 7  # stem + two per block, three of them after a residual sum
    for name in names:
        ratio = free.thresholds[name].item() / observed.thresholds[name].item()
        assert 0.5 < ratio < 2.0, (name, ratio)


def test_bnstats_follows_the_channel_axis_through_permute_and_flatten(data):
    nhwc = trained_batchnorm(ChannelsLast(), data)
    nchw = ChannelsFirst(nhwc).eval()
    with torch.no_grad():
        assert torch.allclose(nhwc(data), nchw(data), atol=1e-5)
    last = convert(nhwc, None, calibration="bnstats").thresholds
    first = convert(nchw, None, calibration="bnstats").thresholds
    assert len(last) == len(first) == 3
    for a, b in zip(last.values(), first.values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4)
    # a flatten read in the wrong order changes the estimate for the layer after it
    shuffled = ChannelsFirst(nhwc).eval()
    shuffled.fc.weight.data = nhwc.fc.weight.data.clone()
    other = convert(shuffled, None, calibration="bnstats").thresholds
    assert not torch.allclose(list(other.values())[2], list(first.values())[2], rtol=1e-3)


class ConcatAlongWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(torch.cat([x, x], dim=3))
        return self.fc(x.mean((2, 3)))


def test_bnstats_names_the_layer_and_the_method_that_can(data):
    with pytest.raises(ConvertSNNError) as err:
        convert(ConcatAlongWidth().eval(), None, calibration="bnstats")
    message = str(err.value)
    assert "node 'cat'" in message and "--calibration biascal:mse" in message
    assert "\n" not in message
    snn = convert(ConcatAlongWidth().eval(), loader(data), calibration="biascal:mse")
    assert len(snn.thresholds) == 2


def test_bnmse_is_data_free_and_lowers_thresholds_for_few_steps(data):
    model = trained_batchnorm(residual_net(), data)
    high = convert(model, None, calibration="bnstats").thresholds
    short = convert(model, None, timesteps=2, calibration="bnmse").thresholds
    long = convert(model, None, timesteps=32, calibration="bnmse").thresholds
    for name in high:
        assert short[name] <= long[name] + 1e-6 <= high[name] + 2e-6
    assert sum(short[n] < long[n] for n in high) >= len(high) // 2


def test_offset_calibration_shifts_the_initial_membrane_layer_by_layer(data, tmp_path):
    model = trained_batchnorm(residual_net(blocks=1), data)
    base = convert(model, loader(data), timesteps=4, calibration="percentile:99.9")
    shifted = convert(model, loader(data), timesteps=4, calibration="offset:percentile:99.9")
    chosen = shifted.metadata["initial_membrane"]
    neurons = dict(shifted.body.named_modules())
    assert set(chosen) == set(shifted.thresholds)
    assert all(chosen[name] == neurons[name].v_init for name in chosen)
    assert set(chosen.values()) <= set(V_INIT_GRID) and set(chosen.values()) != {0.5}
    with torch.no_grad():
        reference = model(data)
        error_base = (base(data) - reference).pow(2).mean()
        error_shifted = (shifted(data) - reference).pow(2).mean()
    assert error_shifted < 0.5 * error_base
    save_snn(shifted, tmp_path / "offset.safetensors")
    loaded = load_snn(tmp_path / "offset.safetensors")
    assert [n.v_init for n in loaded.neurons()] == [n.v_init for n in shifted.neurons()]
    assert str(get_calibration("offset:biascal:mse")) == "offset:biascal:mse:grid=100"


def relu_count(model: nn.Module) -> int:
    gm = prepare_ann(model.eval())
    counts = []
    hooks = [
        gm.get_submodule(name).register_forward_hook(lambda m, i, o: counts.append(o[0].numel()))
        for name in activation_names(gm)
    ]
    with torch.no_grad():
        gm(torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return sum(counts)


def test_deep_cifar_resnets_and_vnncomp_resnet4b():
    assert {"resnet44", "resnet110", "resnet4b"} <= set(list_models())
    params = {
        name: sum(p.numel() for p in create_model(name).parameters())
        for name in ("resnet20", "resnet44", "resnet56", "resnet110")
    }
    assert params["resnet20"] == 269_722 and params["resnet56"] == 853_018
    assert 0.65e6 < params["resnet44"] < 0.67e6 and 1.72e6 < params["resnet110"] < 1.74e6
    assert len(activation_names(prepare_ann(create_model("resnet110")))) == 109
    # VNN-COMP 2021 cifar10_resnet: 6,244 and 14,436 ReLUs; ResNet-2B keys unchanged
    assert relu_count(create_model("resnet2b")) == 6244
    assert relu_count(create_model("resnet4b")) == 14436
    keys = set(create_model("resnet4b").state_dict())
    assert {"layer2.0.shortcut.0.weight", "layer2.1.conv2.bias", "linear1.weight"} <= keys
    assert create_model("resnet4b").linear1.in_features == 512
    assert "layer1.0.shortcut.0.weight" in create_model("resnet2b").state_dict()
    torch.manual_seed(0)
    net = create_model("resnet4b").eval()
    x = torch.rand(4, 3, 32, 32)
    snn = convert(net, [(x, torch.zeros(4))], timesteps=8, calibration="max")
    with torch.no_grad(), snn.gradient("ann"):
        assert torch.allclose(snn(x), net(x), atol=1e-4)


def test_auto_keeps_the_candidate_that_agrees_best_and_records_it(data, tmp_path):
    model = trained_batchnorm(residual_net(blocks=1), data)
    snn = convert(model, loader(data), timesteps=2, calibration="auto:max+mse+bnmse")
    record = snn.metadata["auto_calibration"]
    scores = record["agreement_with_ann"]
    assert list(scores) == ["max", "mse:grid=100", "bnmse:K=3,samples=20000,grid=100"]
    assert record["chosen"] in scores and scores[record["chosen"]] == max(scores.values())
    assert record["timesteps"] == 2 and record["holdout_images"] == 16
    chosen = convert(model, loader(data[:48]), timesteps=2, calibration=record["chosen"])
    for name, theta in chosen.thresholds.items():
        assert torch.allclose(snn.thresholds[name], theta)
    save_snn(snn, tmp_path / "auto.safetensors")
    assert load_snn(tmp_path / "auto.safetensors").metadata["auto_calibration"] == record
    with pytest.raises(ConvertSNNError, match="auto cannot try 'biascal:qcfs"):
        get_calibration("auto:mse+biascal:qcfs")
