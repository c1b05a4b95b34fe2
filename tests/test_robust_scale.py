"""The ``robust`` calibration: thresholds scaled by the factor most robust on held-out images."""

from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from convertsnn.cli import main
from convertsnn.convert import convert
from convertsnn.convert.calibration import get_calibration, robust_scale
from convertsnn.convert.calibration.robust_scale import SCALES
from convertsnn.eval import suites
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn
from tests.test_calibration import loader, small_cnn, trained_batchnorm

ASSETS = "convertsnn/assets"


def test_robust_spec_names_its_radius_and_base():
    method = get_calibration("robust:2/255:biascal:mse")
    assert method.eps == pytest.approx(2 / 255)
    assert str(method) == "robust:2/255:biascal:mse:grid=100"
    assert str(get_calibration("robust:0.1")).startswith("robust:0.1:auto:")


def test_robust_keeps_the_most_robust_scale_of_the_base_thresholds(monkeypatch):
    torch.manual_seed(1)
    data = torch.rand(32, 3, 12, 12)
    model = trained_batchnorm(small_cnn(), data)
    fitted = convert(model, loader(data[:24]), timesteps=2, calibration="mse").thresholds
    name = next(iter(fitted))
    attacked = []

    def scored_by_scale(suite, snn, x, y, settings):
        """A stand-in suite whose robust accuracy peaks at 0.7 x the fitted thresholds."""
        attacked.append(len(x))
        scale = (snn.thresholds[name] / fitted[name]).mean().item()
        return SimpleNamespace(robust=1 - abs(scale - 0.7), ensemble=SimpleNamespace(clean=1.0))

    monkeypatch.setattr(suites, "run_suite", scored_by_scale)
    snn = convert(model, loader(data), timesteps=2, calibration="robust:0.05:mse")
    record = snn.metadata["robust_threshold_scale"]
    assert record["chosen"] == pytest.approx(0.7) and record["holdout_images"] == 8
    assert list(record["scores"]) == [f"{s:g}" for s in SCALES] and attacked == [8] * len(SCALES)
    assert record["eps"] == pytest.approx(0.05) and record["suite"] == "quick"
    for layer, theta in fitted.items():  # BASE saw only the first 24 images
        assert torch.allclose(snn.thresholds[layer], theta * 0.7)


def test_robust_conversion_of_the_mnist_demo_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(robust_scale, "SCALES", (1.0, 0.6))  # two real quick suites, not six
    out = tmp_path / "robust.safetensors"
    args = ["convert", f"{ASSETS}/mnist_cnn_pgd.safetensors", "--calib",
            f"{ASSETS}/mnist_sample.npz", "--calib-images", "16", "-T", "2",
            "--calibration", "robust:0.1:mse", "--device", "cpu", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    snn = load_snn(out)
    record = snn.metadata["robust_threshold_scale"]
    assert record["holdout_images"] == 4 and record["chosen"] in (1.0, 0.6)
    scores = record["scores"]
    assert scores[f"{record['chosen']:g}"]["robust"] == max(s["robust"] for s in scores.values())
    assert all(0 <= s["robust"] <= s["clean"] <= 1 for s in scores.values())
    assert all(isinstance(m, IFNeuron) for m in snn.neurons())
