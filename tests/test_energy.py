"""Spike counts, synaptic operations and energy of `convertsnn profile`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn import convert
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
