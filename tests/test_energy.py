"""Spike counts, synaptic operations and energy of `convertsnn profile`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn import convert
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.energy import E_AC_PJ, E_MAC_PJ, _accumulates, profile_snn
from tests.cli_helpers import assert_one_line_error, run_cli


@pytest.fixture
def mlp_snn():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5)).eval()
    calib = torch.rand(64, 3, 2, 2)
    snn = convert(ann, [(calib, None)], timesteps=6, calibration="max")
    snn.metadata["input_size"] = [3, 2, 2]
    return snn


def test_counts_follow_from_spikes_and_layer_sizes(mlp_snn):
    images, labels = torch.rand(10, 3, 2, 2), torch.randint(0, 5, (10,))
    profile = profile_snn(mlp_snn, images, labels, batch_size=4)
    (neurons,) = profile.neuron_layers
    first, second = profile.synaptic_layers
    assert (first.input, second.input) == ("analog", "spikes")
    assert (first.ann_macs, second.ann_macs) == (12 * 20, 20 * 5)
    assert first.snn_macs == 6 * 12 * 20 and first.snn_sops == 0
    # every spike of the hidden layer is added into each of the 5 outputs
    assert second.snn_sops == pytest.approx(neurons.spikes_per_image * 5)
    assert sum(neurons.spikes_per_step) == pytest.approx(neurons.spikes_per_image)
    assert neurons.firing_rate == pytest.approx(neurons.spikes_per_image / (20 * 6))
    assert profile.snn_energy_uj == pytest.approx(
        (second.snn_sops * E_AC_PJ + first.snn_macs * E_MAC_PJ) * 1e-6
    )
    assert profile.ann_energy_uj == pytest.approx((240 + 100) * E_MAC_PJ * 1e-6)
    with torch.no_grad():
        assert profile.accuracy == (mlp_snn(images).argmax(1) == labels).float().mean()
    assert 1 <= profile.settle_step_mean <= 6


def test_conv_accumulates_count_padding_borders_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = (torch.rand(2, 3, 7, 7) > 0.7).float() * 0.5
    columns = F.unfold((x != 0).float(), 3, padding=1, stride=2)  # [B, 3*9, positions]
    expected = columns.sum(1).sum(1) * 4
    assert torch.equal(_accumulates(conv, x), expected)


def test_cli_profile_writes_json_and_plots(tmp_path, mnist_sample):
    result = run_cli("profile", "zoo:mnist_cnn_pgd_snn_t8", "--data", mnist_sample, "--limit",
                     "8", "-T", "2", "--e-ac", "0.03", "-o", tmp_path / "p.json",
                     "--report", tmp_path / "rep")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["timesteps"] == 2 and summary["e_ac_pj"] == 0.03
    assert summary["totals"]["snn_sops"] > 0 and summary["totals"]["ann_macs"] > 0
    for name in ("profile.md", "profile.json", "firing_rates.png", "spikes_vs_T.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_cli_profile_refuses_data_of_the_wrong_shape_before_running(tmp_path):
    from tests.conftest import write_npz

    data = write_npz(tmp_path / "d.npz", shape=(8, 8, 3))
    result = run_cli("profile", "zoo:mnist_cnn_pgd_snn_t8", "--data", data)
    assert_one_line_error(result, "images in")
    assert "but the model expects (1, 28, 28)" in result.output
    result = run_cli("profile", "zoo:mnist_cnn_pgd_snn_t8", "--data", data, "--e-mac", "x")
    assert_one_line_error(result, "--e-mac 'x' is not a number")


def test_evaluate_report_includes_the_profile(tmp_path, mnist_sample):
    result = run_cli("evaluate", "zoo:mnist_cnn_pgd_snn_t8", "--data", mnist_sample, "--limit",
                     "8", "-T", "2", "--no-ann", "--report", tmp_path / "rep")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = (tmp_path / "rep" / "report.md").read_text()
    assert report.startswith("# Robustness of")
    assert "## Spikes, operations and energy of zoo:mnist_cnn_pgd_snn_t8" in report
    assert json.loads((tmp_path / "rep" / "profile.json").read_text())["images"] == 8
    assert (tmp_path / "rep" / "firing_rates.png").is_file()


def _chain_snn(signed: bool = False, burst: int = 1, readout: str = "mean", population: int = 1):
    """1 pixel -> Linear 1->1 -> neuron A -> Linear 1->1 -> neuron B -> Linear 1->3, T = 4,
    thresholds 1 (calibrated on a white image), for hand-counted spikes."""
    ann = nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU(),
                        nn.Linear(1, 3))  # fmt: skip
    with torch.no_grad():
        for layer, w, b in ((ann[1], 1.0, 0.0), (ann[3], 2.0, -1.0), (ann[5], 1.0, 0.0)):
            layer.weight.fill_(w)
            layer.bias.fill_(b)
    white = torch.ones(1, 1, 1, 1)
    snn = convert(ann, [(white, None)], 4, "max", signed=signed, burst=burst, population=population)
    snn.metadata["input_size"] = [1, 1, 1]
    snn.readout = readout
    assert all(n.threshold.item() == 1.0 for n in snn.neurons())
    return snn


def test_signed_spikes_count_as_events_and_operations():
    # a grey pixel (0.5): A fires at steps 1, 3 (membrane 1.0, 0.5, 1.0, 0.5); B gets currents
    # 2 * A - 1 = 1, -1, 1, -1 and sends +1, -1, +1, -1 (membrane 1.5, -0.5, 1.5, -0.5)
    snn = _chain_snn(signed=True)
    profile = profile_snn(snn, torch.full((1, 1, 1, 1), 0.5))
    a, b = profile.neuron_layers
    assert a.spikes_per_step == [1, 0, 1, 0] and b.spikes_per_step == [1, 1, 1, 1]
    assert (a.spikes_per_image, b.spikes_per_image) == (2, 4)  # |s|: -1 spikes count
    first, second, third = profile.synaptic_layers
    assert (first.snn_macs, second.snn_sops, third.snn_sops) == (4, 2 * 1, 4 * 3)


def test_burst_spikes_count_once_each():
    snn = _chain_snn(burst=3)
    with torch.no_grad():  # a grey pixel through a weight of 5.2: A gets 2.6 a step, and its
        # membrane from 0.5 reads 3.1, 2.7, 3.3, 2.9
        next(m for m in snn.body.modules() if isinstance(m, nn.Linear)).weight.fill_(5.2)
    profile = profile_snn(snn, torch.full((1, 1, 1, 1), 0.5))
    a, b = profile.neuron_layers
    assert a.spikes_per_step == [3, 2, 3, 2]
    # B: currents 2 * s - 1 = 5, 3, 5, 3 from 0.5: membrane 5.5 -> 3 (capped), 5.5 -> 3, ...
    assert b.spikes_per_step == [3, 3, 3, 3]
    _, second, third = profile.synaptic_layers
    assert (second.snn_sops, third.snn_sops) == (10 * 1, 12 * 3)
    assert a.firing_rate == pytest.approx(10 / 4)  # spikes per neuron per step, above 1


def test_population_members_spikes_count_each():
    # a grey pixel (0.5 a step) into A's two members, from 0.25 and 0.75: they fire at steps
    # 2, 4 and 1, 3, so A passes on 0.5 every step and B gets 2 * 0.5 - 1 = 0 (never fires)
    snn = _chain_snn(population=2)
    profile = profile_snn(snn, torch.full((1, 1, 1, 1), 0.5))
    a, b = profile.neuron_layers
    assert a.spikes_per_step == [1, 1, 1, 1] and b.spikes_per_step == [0, 0, 0, 0]
    _, second, third = profile.synaptic_layers
    assert (second.snn_sops, third.snn_sops) == (4 * 1, 0)


def test_burst_spikes_through_pooling_and_per_channel_thresholds():
    # 2x2 image of ones -> 1x1 conv (weights 2.6, 1.3) -> neurons (thresholds 1, 0.5) ->
    # average pool -> flatten -> Linear 2->3: every neuron sends 3, 2, 3, 2 spikes
    ann = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(2, 3))  # fmt: skip
    with torch.no_grad():
        ann[0].weight.copy_(torch.tensor([2.6, 1.3]).view(2, 1, 1, 1))
        ann[0].bias.zero_()
    ones = torch.ones(1, 1, 2, 2)
    snn = convert(ann, [(ones, None)], 4, "max", burst=3)
    (neuron,) = snn.neurons()
    neuron.threshold.data = torch.tensor([1.0, 0.5])
    snn.metadata["input_size"] = [1, 2, 2]
    profile = profile_snn(snn, ones)
    assert profile.neuron_layers[0].spikes_per_step == [24, 16, 24, 16]  # 8 neurons
    conv, linear = profile.synaptic_layers
    assert (conv.input, conv.snn_macs) == ("analog", 4 * 8)
    assert linear.snn_sops == 2 * 10 * 3  # the pooled counts 3, 2, 3, 2 per channel


def test_delayed_readout_warm_up_steps_cost_operations_and_latency(mlp_snn):
    images, labels = torch.rand(10, 3, 2, 2), torch.randint(0, 5, (10,))
    mean = profile_snn(mlp_snn, images, labels)
    mlp_snn.readout = "delay:2"
    delayed = profile_snn(mlp_snn, images, labels)
    assert delayed.readout_delay == 2 and delayed.timesteps == 6
    # the warm-up steps run: same spikes and operations as the plain mean over 6 steps
    assert delayed.snn_sops == mean.snn_sops and delayed.snn_macs == 6 * 240
    assert delayed.spikes_per_image == mean.spikes_per_image
    assert 3 <= delayed.settle_step_mean <= 6  # no prediction before step D + 1
    with torch.no_grad():
        assert delayed.accuracy == (mlp_snn(images).argmax(1) == labels).float().mean()
    mlp_snn.timesteps = 2
    with pytest.raises(ConvertSNNError, match="skips the first 2 steps"):
        profile_snn(mlp_snn, images)


def test_cli_profile_reports_the_warm_up_steps(tmp_path, mnist_sample):
    from convertsnn.snn.serialize import load_snn, save_snn
    from convertsnn.zoo import resolve_model_file

    snn = load_snn(resolve_model_file("zoo:mnist_cnn_pgd_snn_t8"))
    snn.readout = "delay:3"
    path = save_snn(snn, tmp_path / "delayed.safetensors")
    result = run_cli("profile", path, "--data", mnist_sample, "--limit", "4", "-T", "4",
                     "-o", tmp_path / "p.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 (3 warm-up)" in result.output and "skips the first 3 steps" in result.output
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["readout_delay"] == 3 and summary["settle_step_mean"] == 4
    result = run_cli("profile", path, "--data", mnist_sample, "--limit", "4", "-T", "3")
    assert_one_line_error(result, "skips the first 3 steps (delay:3)")
