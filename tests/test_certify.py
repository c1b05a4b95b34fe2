"""Randomised-smoothing certification (Cohen et al. 2019): radii of toy classifiers with a
known margin, per-step noise of a Gaussian-coded SNN, the confidence bound, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import binom
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.eval.certify import (
    ABSTAIN,
    certified_accuracy,
    certify_dataset,
    certify_one,
    effective_sigma,
    lower_confidence_bound,
)
from convertsnn.snn.encoding import parse_encoder
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn, save_snn
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.finetune_helpers import separable_npz, tiny_snn_file

DIRECTION = torch.tensor([0.6, -0.8, 0.0, 0.0])  # unit vector


def halfspace_classifier() -> nn.Module:
    """Class 0 where ``DIRECTION . x > 0.5``, else class 1, on [1, 2, 2] images."""
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.stack([DIRECTION, -DIRECTION]) / 2)
        linear.bias.copy_(torch.tensor([-0.25, 0.25]))
    return nn.Sequential(nn.Flatten(), linear)


def image_at_margin(margin: float) -> torch.Tensor:
    """An image whose L2 distance to the decision boundary is ``margin`` (class 0 side)."""
    return (DIRECTION * (0.5 + margin)).view(1, 2, 2)


@pytest.mark.parametrize("margin", [0.1, 0.25])
def test_radius_of_a_halfspace_is_its_margin(margin):
    torch.manual_seed(0)
    sigma = 0.2
    cert = certify_one(halfspace_classifier(), image_at_margin(margin), 0, n0=100, n=20_000,
                       alpha=0.001, sigma=sigma, classes=2, extra_sigma=sigma)  # fmt: skip
    assert cert.prediction == 0
    # the exact answer is `margin`; the lower confidence bound makes it a little smaller
    assert margin - 0.06 * sigma < cert.radius <= margin


def test_per_step_noise_of_a_gaussian_coded_snn_certifies_with_sigma_over_sqrt_t():
    torch.manual_seed(1)
    sigma, steps, margin = 0.4, 4, 0.15
    snn = SpikingNetwork(halfspace_classifier(), steps, encoder=f"gaussian:{sigma}")
    assert effective_sigma(snn) == pytest.approx(sigma / math.sqrt(steps))
    assert effective_sigma(snn, 0.3) == pytest.approx(math.sqrt(0.09 + sigma**2 / steps))
    cert = certify_one(snn, image_at_margin(margin), 0, 100, 20_000, 0.001,
                       effective_sigma(snn), 2)  # fmt: skip
    assert cert.prediction == 0
    assert margin - 0.06 * sigma / 2 < cert.radius <= margin


def test_abstains_on_the_decision_boundary_and_counts_it_wrong():
    torch.manual_seed(2)
    model = halfspace_classifier()
    images = torch.stack([image_at_margin(0.0), image_at_margin(0.3)])
    certs = certify_dataset(model, images, torch.tensor([0, 0]), n0=50, n=2000, alpha=0.001,
                            extra_sigma=0.25, batch_size=500, progress=False)  # fmt: skip
    assert certs[0].prediction == ABSTAIN and certs[0].radius == 0
    assert certs[1].prediction == 0 and certs[1].radius > 0.2
    assert certified_accuracy(certs, 0.0) == 0.5
    assert certified_accuracy(certs, 0.31) == 0.0


def test_clopper_pearson_lower_bound():
    for count, draws in [(5, 10), (990, 1000), (9_990, 10_000)]:
        p = lower_confidence_bound(count, draws, 0.001)
        assert binom.sf(count - 1, draws, p) == pytest.approx(0.001, rel=1e-4)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))


def test_nothing_to_certify_without_gaussian_noise():
    snn = SpikingNetwork(halfspace_classifier(), 4, encoder="poisson")
    with pytest.raises(ConvertSNNError, match="adds no Gaussian noise"):
        effective_sigma(snn)
    assert effective_sigma(snn, 0.25) == 0.25
    with pytest.raises(ConvertSNNError, match="adds no Gaussian noise"):
        effective_sigma(halfspace_classifier())


@pytest.fixture(scope="module")
def gaussian_snn(tmp_path_factory):
    root = tmp_path_factory.mktemp("certify")
    data = separable_npz(root / "data.npz", n=12)
    path = tiny_snn_file(root / "snn.safetensors", data)
    snn = load_snn(path)
    snn.encoder = parse_encoder("gaussian:0.1")
    return save_snn(snn, root / "gauss.safetensors"), path, data


def test_certify_command_writes_json_plot_and_resumes(gaussian_snn, tmp_path):
    model, _, data = gaussian_snn
    args = ["certify", model, "--data", data, "--n0", "10", "--n", "60", "--limit", "5",
            "--batch-size", "32", "--device", "cpu", "--resume", tmp_path / "state"]  # fmt: skip
    result = run_cli(*args, "--out", tmp_path / "c.json", "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert "sigma_eff 0.07071" in result.output and "certified accuracy" in result.output
    document = json.loads((tmp_path / "c.json").read_text())
    assert len(document["certificates"]) == 5 and len(document["curve"]) == 11
    assert document["sigma_effective"] == pytest.approx(0.1 / math.sqrt(2))
    assert (tmp_path / "c.png").stat().st_size > 1000
    state = (tmp_path / "state" / "certificates.jsonl").read_text()
    again = run_cli(*args, "--out", tmp_path / "d.json")
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "d.json").read_text())
    assert second["certificates"] == document["certificates"]
    assert (tmp_path / "state" / "certificates.jsonl").read_text() == state
    changed = run_cli(*args[:-2], "--n", "80", "--resume", tmp_path / "state")
    assert changed.exit_code == 1 and "made with other settings" in changed.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--alpha", "0.7"], "alpha must be in (0, 0.5)"),
        (["--n", "0"], "n must be a positive integer, got 0"),
        (["--sigma", "-1"], "--sigma must be at least 0"),
        (["--radii", "a"], "--radii 'a' is not a number"),
    ],
)
def test_certify_bad_input_gives_one_line_errors(gaussian_snn, flags, message):
    model, _, data = gaussian_snn
    result = run_cli("certify", model, "--data", data, "--limit", "1", "--device", "cpu", *flags)
    assert_one_line_error(result, message)


def test_certify_a_direct_coded_snn_needs_sigma(gaussian_snn):
    _, direct, data = gaussian_snn
    result = run_cli("certify", direct, "--data", data, "--limit", "1", "--device", "cpu")
    assert result.exit_code == 1 and "adds no Gaussian noise" in result.output
    result = run_cli("certify", direct, "--data", data, "--limit", "2", "--n", "40", "--n0",
                     "5", "--sigma", "0.1", "--device", "cpu", "--radii", "0,0.1")  # fmt: skip
    assert result.exit_code == 0, result.output
