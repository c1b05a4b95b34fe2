"""Calibration recipes: registry and specs, each method's defining property, the no-data path."""

from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convertsnn.cli import main
from convertsnn.convert import convert, prepare_ann
from convertsnn.convert.calibration import get_calibration, list_calibrations, mse
from convertsnn.convert.calibration.bias_correction import channel_mean
from convertsnn.convert.calibration.mse import best_channel_thresholds, best_threshold
from convertsnn.convert.calibration.observers import ActivationObserver
from convertsnn.convert.calibration.qcfs import QCFSActivation
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.robustness import source_ann_view
from convertsnn.importers import Preprocessing, save_ann
from convertsnn.models import create_model
from convertsnn.objectives.distill import frozen_source_ann
from convertsnn.snn.neurons import IFNeuron
from tests.conftest import write_npz


def loader(x: torch.Tensor, batch: int = 8):
    y = torch.arange(len(x)) % 3
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def trained_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running statistics from ``x`` (exact averages), so they describe the data."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture
def data() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(32, 3, 12, 12)


def test_registry_lists_every_method():
    expected = {
        "max",
        "percentile",
        "layerwise",
        "channelwise",
        "qcfs",
        "biascal",
        "bnstats",
        "mse",
    }
    assert expected <= set(list_calibrations())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("qcfs:L=four", "is not a number"),
        ("qcfs:eps=2/0", "is not a number"),
        ("qcfs:eps=0.1,beta=2", "beta in [0, 1]"),
        ("mse:scale=0", "scale > 0"),
        ("mse:channel=2", "channel 0 or 1"),
        ("qcfs:levels=4", "KEY one of L, epochs"),
        ("layerwise:scale=-1", "scale > 0"),
        ("channelwise:101", "percentile must be in"),
        ("biascal:median", "unknown calibration"),
        ("bnstats:0", "K > 0"),
        ("robust", "needs the attack radius: robust:EPS[:BASE]"),
        ("robust:2", "radius in (0, 1)"),
        ("robust:two", "is not a number"),
        ("robust:0.1:median", "unknown calibration"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, message):
    with pytest.raises(ConvertSNNError) as err:
        get_calibration(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_spec_options_are_parsed():
    method = get_calibration("qcfs:L=8,epochs=1,lr=0.05")
    assert (method.levels, method.epochs, method.lr) == (8, 1, 0.05)
    assert get_calibration("qcfs:eps=2/255").eps == pytest.approx(2 / 255)
    assert get_calibration("qcfs:2").levels == 2
    assert str(get_calibration("biascal:channelwise:99")) == "biascal:channelwise:99"


def test_channelwise_thresholds_are_per_channel_with_a_fallback(data):
    model = small_cnn().eval()
    with torch.no_grad():  # channel 0 of the first layer never fires
        model[1].bias[0] = -100.0
    snn = convert(model, loader(data), calibration="channelwise:99.9")
    first, second = snn.thresholds.values()
    assert first.shape == (8,) and second.shape == (8,)
    assert (first > 0).all() and len(set(first[1:].tolist())) == 7
    layer = convert(model, loader(data), calibration="percentile:99.9")
    assert first[0] == next(iter(layer.thresholds.values()))  # the dead channel's fallback


def test_layerwise_sets_seed001_statistic_then_scales(data):
    model = small_cnn().eval()
    spec = "layerwise:steps=10,images=16,batch=8"
    snn = convert(model, loader(data), calibration=f"{spec},scale=1")
    # The first layer's current is the conv of the image, the same at each of the T steps:
    # its threshold is the max over the two batches of 8 of their 99.7th percentiles.
    conv = prepare_ann(model).get_submodule("0")
    with torch.no_grad():
        current = conv(data[:16])
    expected = max(
        torch.quantile(current[i : i + 8].flatten(), 0.997, interpolation="nearest").item()
        for i in (0, 8)
    )
    thresholds = list(snn.thresholds.values())
    assert thresholds[0].item() == pytest.approx(expected, rel=0.01)
    scaled = convert(model, loader(data), calibration=f"{spec},scale=0.3")
    for low, full in zip(scaled.thresholds.values(), thresholds, strict=True):
        assert low.item() == pytest.approx(0.3 * full.item(), rel=1e-5)


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_if_neuron_at_t_equal_l_reproduces_the_qcfs_activation(levels):
    torch.manual_seed(0)
    theta = 1.7
    x = torch.randn(64, 5) * 2
    neuron = IFNeuron(threshold=theta, v_init=0.5)
    neuron.timesteps = levels
    rate = neuron(x.repeat(levels, 1)).view(levels, *x.shape).mean(0)
    assert torch.allclose(rate, QCFSActivation(theta, levels)(x), atol=1e-5)


def test_qcfs_finetunes_the_ann_and_hands_over_its_thresholds(data):
    model = small_cnn().eval()
    method = get_calibration("qcfs:L=2,epochs=1,batch=8")
    snn = convert(model, loader(data), timesteps=2, calibration=method)
    assert len(method.history) == 1 and method.history[0]["distill_loss"] > 0
    for name, theta in snn.thresholds.items():
        assert torch.equal(theta, method._thresholds[name])
    before = prepare_ann(model).get_submodule("0").weight
    assert not torch.allclose(snn.body.get_submodule("0").weight, before)
    assert all(isinstance(m, IFNeuron) for m in snn.neurons())


def test_robust_qcfs_distils_the_source_ann_at_adversarial_points(data, monkeypatch):
    from convertsnn.objectives.inner import InnerPGD

    model = small_cnn().eval()
    attacked = []
    perturb = InnerPGD.perturb

    def recording(self, x, reference):
        x_adv = perturb(self, x, reference)
        attacked.append((self.eps, self.steps, (x_adv - x).abs().max().item()))
        return x_adv

    monkeypatch.setattr(InnerPGD, "perturb", recording)
    method = get_calibration("qcfs:L=2,epochs=1,batch=8,eps=0.1,steps=2")
    convert(model, loader(data), timesteps=2, calibration=method)
    assert len(attacked) == len(data) // 8  # one attack per training batch
    assert all(eps == 0.1 and steps == 2 for eps, steps, _ in attacked)
    assert all(0 < moved <= 0.1 + 1e-6 for _, _, moved in attacked)
    assert method.history[0]["distill_loss"] > 0
    assert "eps=0.1,steps=2" in str(method)


def test_bias_calibration_reduces_the_layer_errors(data):
    torch.manual_seed(0)
    model = trained_batchnorm(small_cnn(), data)
    base = convert(model, loader(data), timesteps=3, calibration="percentile:99.9")
    fixed = convert(model, loader(data), timesteps=3, calibration="biascal:percentile:99.9")
    last = list(base.thresholds)[-1]

    def last_layer_mean(snn, mode):
        seen = {}
        module = snn.body.get_submodule(last)
        hook = module.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
        with torch.no_grad(), snn.gradient(mode):
            snn(data)
        hook.remove()
        if mode == "ann":  # the ANN target: the activation clipped at the threshold
            return channel_mean(seen["x"].clamp(min=0).clamp(max=module.threshold.item()))
        return channel_mean(seen["out"])

    target = last_layer_mean(base, "ann")
    error_before = (last_layer_mean(base, "bptt") - target).abs().mean()
    error_after = (last_layer_mean(fixed, "bptt") - target).abs().mean()
    assert error_after < 0.5 * error_before
    with torch.no_grad():
        logits = model(data)
        assert (fixed(data) - logits).abs().mean() < (base(data) - logits).abs().mean()


def test_bias_corrections_are_recorded_and_the_distillation_teacher_undoes_them(data):
    torch.manual_seed(0)
    model = trained_batchnorm(small_cnn(), data)
    base = convert(model, loader(data), timesteps=3, calibration="percentile:99.9")
    fixed = convert(model, loader(data), timesteps=3, calibration="biascal:percentile:99.9")
    corrections = fixed.metadata["bias_corrections"]
    assert corrections and "bias_corrections" not in base.metadata
    for name, shift in corrections.items():
        moved = fixed.body.get_submodule(name).bias - base.body.get_submodule(name).bias
        assert torch.allclose(moved, torch.tensor(shift), atol=1e-6)
    with torch.no_grad():
        teacher = frozen_source_ann(fixed)(data)
        assert torch.allclose(teacher, model(data), atol=1e-4)
        with fixed.gradient("ann"):
            assert not torch.allclose(fixed(data), model(data), atol=1e-4)


def test_weight_calibration_fits_each_feeding_layer_and_records_it(data):
    model = trained_batchnorm(small_cnn(), data)
    base = convert(model, loader(data), timesteps=3, calibration="biascal:percentile:99.9")
    fitted = convert(model, loader(data), timesteps=3, calibration="wcal:biascal:percentile:99.9")
    again = convert(model, loader(data), timesteps=3, calibration="wcal:biascal:percentile:99.9")
    record = fitted.metadata["weight_calibration"]
    assert set(record) == set(fitted.thresholds)  # both spiking layers are fed by a conv
    assert all(r["mse_after"] <= r["mse_before"] for r in record.values())
    assert any(r["mse_after"] < 0.99 * r["mse_before"] for r in record.values())
    for name, r in record.items():
        moved = (
            fitted.body.get_submodule(r["layer"]).weight
            - base.body.get_submodule(r["layer"]).weight
        )
        assert (moved.abs().max() > 0) == (r["mse_after"] < r["mse_before"])
        assert torch.equal(fitted.thresholds[name], base.thresholds[name])
    for mine, theirs in zip(fitted.parameters(), again.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # seeded: the same file every time
    with pytest.raises(ConvertSNNError, match="burst neurons"):
        convert(model, loader(data), timesteps=3, calibration="wcal:percentile:99.9", burst=2)


def test_the_ann_row_and_the_teacher_are_the_source_ann_or_refused(data):
    model = trained_batchnorm(small_cnn(), data)
    shifted = convert(model, loader(data), timesteps=3, calibration="biascal:percentile:99.9")
    with torch.no_grad():
        assert torch.allclose(source_ann_view(shifted)(data), model(data), atol=1e-4)
    fitted = convert(model, loader(data), timesteps=3, calibration="wcal:biascal:percentile:99.9")
    with pytest.warns(UserWarning, match="no ANN row"):
        assert source_ann_view(fitted) is None
    with pytest.raises(ConvertSNNError, match="calibration wcal"):
        frozen_source_ann(fitted)


def test_bnstats_needs_no_data_and_matches_the_activation_scale(data):
    torch.manual_seed(0)
    model = trained_batchnorm(small_cnn(), data)
    free = convert(model, None, calibration="bnstats")
    observed = convert(model, loader(data), calibration="percentile:99.9")
    for a, b in zip(free.thresholds.values(), observed.thresholds.values(), strict=True):
        assert 0.5 < a.item() / b.item() < 2.0
    # without any BatchNorm it falls back to propagating through the weights, and says so
    with pytest.warns(UserWarning, match="no BatchNorm statistics"):
        plain = convert(create_model("mnist_cnn", width=4).eval(), None, calibration="bnstats")
    assert all(t.item() > 0 for t in plain.thresholds.values())


def test_cli_default_calibrations_follow_the_measurements(tmp_path):
    """Without --calibration: bnmse without data (best data-free, docs/conversion.md), auto
    with data, biascal:mse (auto's usual pick) below auto's 4 images; a given one is kept."""
    torch.manual_seed(0)
    net = create_model("resnet20")
    ann = save_ann(net, tmp_path / "r20.safetensors", "resnet20", {},
                   Preprocessing((0.5,) * 3, (0.25,) * 3, (3, 32, 32), 10))  # fmt: skip
    out = tmp_path / "snn.safetensors"
    result = CliRunner().invoke(main, ["convert", str(ann), "-T", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "without data (bnmse: BatchNorm statistics" in result.output
    assert "--calib DATA" in result.output
    assert out.is_file() and "calibration bnmse:K=3" in result.output
    data = write_npz(tmp_path / "d.npz", n=8, shape=(32, 32, 3))
    for images, used in (("8", "calibration auto:bnmse"), ("3", "calibration biascal:mse")):
        result = CliRunner().invoke(
            main, ["convert", str(ann), "--calib", str(data), "--calib-images", images, "-T",
                   "4", "-o", str(out)]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert used in result.output and "without data" not in result.output
    result = CliRunner().invoke(
        main, ["convert", str(ann), "--calib", str(data), "--calibration", "qcfs:L=2,epochs=0"]
    )
    assert result.exit_code == 0, result.output
    assert "calibration qcfs:L=2,epochs=0" in result.output


def test_mse_threshold_trades_clipping_for_resolution(data):
    torch.manual_seed(0)
    values = torch.rand(20000)
    assert best_threshold(values, 1.0, 64, 0.5, 100) >= 0.95
    assert best_threshold(values, 1.0, 2, 0.5, 100) < 0.9
    model = small_cnn().eval()
    short = convert(model, loader(data), timesteps=2, calibration="mse")
    long = convert(model, loader(data), timesteps=32, calibration="mse")
    top = convert(model, loader(data), calibration="max")
    for a, b, m in zip(*(s.thresholds.values() for s in (short, long, top)), strict=True):
        assert a < b <= m
    scaled = convert(model, loader(data), timesteps=2, calibration="mse:scale=0.7")
    for a, s in zip(short.thresholds.values(), scaled.thresholds.values(), strict=True):
        assert torch.allclose(s, 0.7 * a)
    assert str(get_calibration("mse:scale=0.7")) == "mse:grid=100,scale=0.7"


def test_per_channel_mse_thresholds_search_each_channel(data):
    """``best_channel_thresholds`` finds, channel by channel, ``best_threshold``'s choice on
    that channel's positive values (zeros cost nothing at any threshold); ``mse:channel=1``
    gives one threshold per channel, the layer's where a channel never fired."""
    torch.manual_seed(0)
    scales = torch.tensor([0.1, 1.0, 5.0])
    values = (torch.randn(3, 4000) * scales[:, None]).clamp(min=0)
    tops = values.amax(1)
    found = best_channel_thresholds(values, tops, 4, 0.5, 100)
    for c in range(3):
        alone = best_threshold(values[c][values[c] > 0], tops[c].item(), 4, 0.5, 100)
        assert found[c].item() == pytest.approx(alone)
    assert found[0] < found[1] < found[2]

    model = small_cnn().eval()
    with torch.no_grad():  # channel 0 of the first layer never fires
        model[1].bias[0] = -100.0
    layer = convert(model, loader(data), timesteps=4, calibration="mse")
    snn = convert(model, loader(data), timesteps=4, calibration="mse:channel=1")
    scaled = convert(model, loader(data), timesteps=4, calibration="mse:channel=1,scale=0.7")
    (first, second), (first_layer, _) = snn.thresholds.values(), layer.thresholds.values()
    assert first.shape == (8,) and second.shape == (8,) and len(set(second.tolist())) > 1
    assert first[0].item() == pytest.approx(first_layer.item())
    for a, s in zip(snn.thresholds.values(), scaled.thresholds.values(), strict=True):
        assert torch.allclose(s, 0.7 * a)
    assert str(get_calibration("mse:channel=1")) == "mse:grid=100,channel=1"


def test_per_channel_mse_samples_positions_at_random_not_by_stride():
    """More positions than ``CHANNEL_SAMPLES`` are thinned at random: a stride would alias with
    the layout (a last-stage ResNet layer has 64 positions per image, so with 1,024 images a
    stride of 8 kept only its left column)."""
    torch.manual_seed(0)
    columns = 8 * mse.CHANNEL_SAMPLES
    values = torch.rand(2, columns) * torch.tensor([[1.0], [3.0]])
    values[:, ::8] = 0.0  # the "left column": no activity there
    observer = SimpleNamespace(channel_samples=[values], channel_max=values.amax(1),
                               samples=[values[values > 0]], max=values.max())  # fmt: skip
    neuron = IFNeuron(threshold=torch.ones(2))
    found = get_calibration("mse:channel=1").channel_thresholds(observer, 4, neuron)
    everything = best_channel_thresholds(values, values.amax(1), 4, 0.5, 100)
    assert torch.allclose(found, everything, rtol=0.03)


def test_quantised_activation_values():
    act = QCFSActivation(2.0, 4)
    x = torch.tensor([-1.0, 0.2, 0.3, 1.0, 1.9, 5.0])
    assert torch.allclose(act(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 2.0, 2.0]))
    x.requires_grad_(True)
    act(x).sum().backward()  # straight-through: gradient 1 inside (0, theta), 0 outside
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


def test_observer_samples_positive_values_uniformly_and_per_channel():
    """The sampled positions hold positive values only, spread like all positive values;
    per channel, each channel's sample comes from that channel."""
    torch.manual_seed(0)
    out = torch.rand(64, 4, 16, 16) * 10 - 5  # half negative, positives uniform on (0, 5)
    out += torch.arange(4).view(1, 4, 1, 1) * 100 * (out > 0)  # channel c: positives + 100 c
    observer = ActivationObserver(sample_per_batch=8000, per_channel=True)
    observer.update(out)
    sample = observer.samples[0]
    assert len(sample) == 8000 and (sample > 0).all()
    channel = (sample // 100).long()
    assert torch.bincount(channel, minlength=4).min() > 1700  # about 2000 from each channel
    assert abs(torch.quantile(sample[channel == 0], 0.5).item() - 2.5) < 0.2
    per_channel = observer.channel_samples[0]
    assert per_channel.shape == (4, 2000)
    positive = per_channel > 0
    assert (
        (per_channel[positive] // 100).long()
        == torch.arange(4).view(4, 1).expand(4, 2000)[positive]
    ).all()
    few = ActivationObserver(sample_per_batch=8000)
    few.update(out[:1, :1, :4])  # fewer positive values than the sample size: all of them
    assert torch.equal(
        few.samples[0].sort().values, out[:1, :1, :4][out[:1, :1, :4] > 0].sort().values
    )


class ChannelScaled(nn.Module):
    """A per-channel scale (a buffer) after BatchNorm: a node bnstats cannot propagate through
    (it only scales by constants)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 4).view(1, 4, 1, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 10 * 10, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x)) * self.scale))


def test_auto_skips_candidates_that_cannot_model_the_network(data):
    torch.manual_seed(0)
    model = ChannelScaled().eval()
    snn = convert(model, loader(data), timesteps=4, calibration="auto")
    chosen = snn.metadata["auto_calibration"]
    assert "bnmse" in " ".join(chosen["skipped"]) and "mul" in " ".join(chosen["skipped"].values())
    assert "bnmse" not in chosen["chosen"] and len(chosen["agreement_with_ann"]) == 4
    with pytest.raises(ConvertSNNError, match="auto: no candidate could calibrate"):
        convert(model, loader(data), timesteps=4, calibration="auto:bnstats+bnmse")
