"""Graph normalisation: shared activations, max-pool policy, dropout, BN statistics, errors."""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from convertsnn.cli import main
from convertsnn.convert import convert, prepare_ann
from convertsnn.convert.graph import activation_names
from convertsnn.errors import ConvertSNNError
from convertsnn.models import register_model
from convertsnn.snn.pooling import SpikingMaxPool2d
from convertsnn.snn.serialize import load_snn, save_snn
from tests.conftest import randomise_batchnorm, write_npz


def loader(x: torch.Tensor, batch: int = 8):
    return [(x[i : i + batch], torch.zeros(len(x[i : i + batch]))) for i in range(0, len(x), batch)]


class SharedRelu(nn.Module):
    """One ReLU module called twice, as in torchvision's BasicBlock."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_a_shared_activation_becomes_one_neuron_per_call():
    torch.manual_seed(0)
    gm = prepare_ann(SharedRelu())
    names = activation_names(gm)
    assert len(names) == 2 and len(set(names)) == 2
    snn = convert(SharedRelu().eval(), loader(torch.rand(8, 3, 8, 8)), calibration="max")
    thresholds = list(snn.thresholds.values())
    assert len(thresholds) == 2 and not torch.equal(thresholds[0], thresholds[1])


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.dropout(x, p=0.3, training=self.training)
        return self.fc(self.drop(x).flatten(1))


def test_maxpools_become_spiking_and_dropout_goes():
    gm = prepare_ann(Pools())
    pools = [m for m in gm.modules() if isinstance(m, SpikingMaxPool2d)]
    assert len(pools) == 2
    assert not any(isinstance(m, (nn.Dropout, nn.MaxPool2d)) for m in gm.modules())
    assert all("dropout" not in str(n.target) for n in gm.graph.nodes)
    x = torch.rand(4, 3, 8, 8)
    model = Pools().eval()
    gm = prepare_ann(model)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)


def test_spiking_maxpool_outputs_the_max_rate():
    pool = SpikingMaxPool2d(2)
    steps = 40
    rates = torch.tensor([0.3, 0.5, 0.6, 0.2]).view(1, 1, 2, 2)
    phases = torch.tensor([0.1, 0.5, 0.3, 0.8]).view(1, 1, 2, 2)
    # Regular spike trains with these rates and phases, [T, 1, 1, 2, 2]
    t = torch.arange(1, steps + 1).view(-1, 1, 1, 1, 1).float()
    spikes = torch.floor(t * rates + phases) - torch.floor((t - 1) * rates + phases)
    spikes = spikes.flatten(0, 1)
    pool.timesteps = steps
    out = pool(spikes).view(steps, -1).mean(0)
    assert abs(out.item() - 0.6) < 0.05
    # the per-step max of the same trains overestimates: it is the OR of the trains
    assert F.max_pool2d(spikes, 2).view(steps, -1).mean(0).item() > 0.8
    pool.timesteps = 1
    assert torch.equal(pool(rates), F.max_pool2d(rates, 2))


def test_spiking_maxpool_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 8, 8)
    snn = convert(Pools().eval(), loader(x), timesteps=4, calibration="max")
    path = save_snn(snn, tmp_path / "pools.safetensors")
    again = load_snn(path)
    with torch.no_grad():
        assert torch.allclose(again(x), snn(x))


def test_folded_batchnorm_keeps_its_output_statistics():
    torch.manual_seed(0)
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    gm = prepare_ann(model)
    (conv,) = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "0"]
    mean, std = conv.meta["bn_stats"]
    bn = model[1]
    assert torch.allclose(mean, bn.bias)
    scale = (bn.running_var / (bn.running_var + bn.eps)).sqrt()
    assert torch.allclose(std, bn.weight.abs() * scale)


class Swish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.silu(self.conv(x)).flatten(1)


class SigmoidGatedSwish(nn.Module):
    """SiLU as ONNX exporters write it: x * sigmoid(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        h = self.conv(x)
        return (h * self.gate(h)).flatten(1)


class Sorts(nn.Module):
    def forward(self, x):
        return torch.sort(torch.relu(x).flatten(1)).values


class Attention(nn.Module):
    def forward(self, x):
        q = torch.relu(x).flatten(2)
        return torch.matmul(q, q.transpose(1, 2)).flatten(1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Swish(), "SiLU/Swish is not a ReLU"),
        (SigmoidGatedSwish(), "'gate' (module Sigmoid): SiLU/Swish (x * sigmoid(x)) is not a ReLU"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), "GELU is not a ReLU"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Mish()), "Mish is not a ReLU"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1)), "not supported"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh()), "not supported"),
        (Sorts(), "(function sort): this op is not supported"),
        (Attention(), "not supported"),
    ],
)
def test_unsupported_activations_and_ops_give_one_line_errors(model, message):
    with pytest.raises(ConvertSNNError) as err:
        prepare_ann(model)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@register_model
def _test_swish_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes)
    )


def test_cli_reports_a_non_relu_activation_in_one_line(tmp_path):
    path = tmp_path / "swish.pt"
    torch.save(_test_swish_net().state_dict(), path)
    data = write_npz(tmp_path / "d.npz", n=8, shape=(8, 8, 3))
    result = CliRunner().invoke(
        main, ["convert", str(path), "--arch", "_test_swish_net", "--calib", str(data)]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "SiLU/Swish is not a ReLU" in lines[-1]
    assert "retrain or finetune the ANN with ReLU" in lines[-1]
