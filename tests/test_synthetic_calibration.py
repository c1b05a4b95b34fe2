"""The data-free ``synthetic`` calibration: images synthesised from BatchNorm statistics (ZeroQ)."""

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convertsnn.cli import main
from convertsnn.convert import convert, prepare_ann
from convertsnn.convert.calibration import get_calibration, synthetic
from convertsnn.convert.calibration.synthetic import bn_statistics, synthesise_images
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import Preprocessing, save_ann
from convertsnn.models import create_model
from convertsnn.snn.serialize import load_snn
from tests.test_calibration import small_cnn, trained_batchnorm


def statistics_error(gm, x: torch.Tensor) -> float:
    """Mean squared gap between the batch statistics of ``x`` and the BatchNorm ones."""
    outputs = {}
    stats = bn_statistics(gm)
    hooks = [gm.get_submodule(n).register_forward_hook(
        lambda _m, _i, o, n=n: outputs.__setitem__(n, o)) for n, _, _ in stats]  # fmt: skip
    with torch.no_grad():
        gm(x)
    for hook in hooks:
        hook.remove()
    error = 0.0
    for name, mean, std in stats:
        out = outputs[name].transpose(0, 1).flatten(1)
        error += (out.mean(1) - mean).pow(2).mean().item()
        error += (out.std(1, unbiased=False) - std).pow(2).mean().item()
    return error


def test_synthesised_images_reproduce_the_batchnorm_statistics():
    torch.manual_seed(1)
    data = torch.rand(64, 3, 12, 12) * 0.5 + 0.25  # "training data": mid-grey images
    gm = prepare_ann(trained_batchnorm(small_cnn(), data)).eval()
    x = synthesise_images(gm, (3, 12, 12), images=32, steps=150, lr=0.1, device=torch.device("cpu"))
    assert x.shape == (32, 3, 12, 12) and 0 <= x.min() and x.max() <= 1
    noise = torch.rand(32, 3, 12, 12)
    assert statistics_error(gm, x) < 0.1 * statistics_error(gm, noise)
    again = synthesise_images(gm, (3, 12, 12), 32, 150, 0.1, torch.device("cpu"))
    assert torch.equal(x, again)  # seeded: the same images every time


def test_synthetic_calibrates_the_base_method_without_data(monkeypatch):
    monkeypatch.setattr(synthetic.SyntheticImages, "steps", 30)
    torch.manual_seed(1)
    data = torch.rand(64, 3, 12, 12)
    model = trained_batchnorm(small_cnn(), data)
    snn = convert(model, None, timesteps=4, calibration="synthetic",
                  metadata={"input_size": [3, 12, 12]})  # fmt: skip
    assert (
        snn.metadata["conversion"]["calibration"]
        == "synthetic:delay:biascal:mse:grid=100,scale=0.7,channel=1"
    )
    assert snn.metadata["readout_delay"]["images"] == synthetic.SyntheticImages.images
    assert snn.metadata["bias_corrections"]
    with torch.no_grad():
        assert torch.isfinite(snn(data[:8])).all()
    assert get_calibration("synthetic:mse").base.name == "mse"


def test_more_synthetic_images_come_in_batches_each_matched_on_its_own(monkeypatch):
    monkeypatch.setattr(synthetic, "SYNTHESIS_BATCH", 8)
    torch.manual_seed(1)
    data = torch.rand(64, 3, 12, 12)
    model = trained_batchnorm(small_cnn(), data)
    method = get_calibration("synthetic:images=20,steps=10:mse")
    assert (method.images, method.steps, method.base.name) == (20, 10, "mse")
    method.input_size = (3, 12, 12)
    gm = prepare_ann(model).eval()
    method.prepare_ann(gm, None, torch.device("cpu"))
    x = torch.cat([images for images, _ in method.batches])
    assert x.shape == (20, 3, 12, 12)
    cpu = torch.device("cpu")
    first = synthesise_images(gm, (3, 12, 12), 8, 10, method.lr, cpu, seed=0)
    last = synthesise_images(gm, (3, 12, 12), 4, 10, method.lr, cpu, seed=2)
    assert torch.equal(x[:8], first) and torch.equal(x[16:], last)  # batch k: its own seed k
    assert not torch.equal(x[:8], x[8:16])
    assert str(method) == "synthetic:images=20,steps=10:mse:grid=100"
    assert get_calibration(str(method)).images == 20  # the spec in the file converts again
    assert str(get_calibration("synthetic:mse")) == "synthetic:mse:grid=100"  # defaults: no options


@pytest.mark.parametrize(
    "spec, message",
    [
        ("synthetic:images=0:mse", "needs at least one image and one step"),
        ("synthetic:pixels=3:mse", "write KEY=VALUE with KEY one of images, steps"),
        ("synthetic:images=many", "is not a number"),
    ],
)
def test_bad_synthetic_options_are_one_line_errors(spec, message):
    with pytest.raises(ConvertSNNError, match=message) as err:
        get_calibration(spec)
    assert "\n" not in str(err.value)


def test_synthetic_refuses_models_it_cannot_serve_in_one_line():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 2))
    with pytest.raises(ConvertSNNError, match="needs BatchNorm statistics") as err:
        convert(plain, None, 4, "synthetic", metadata={"input_size": [3, 12, 12]})
    assert "\n" not in str(err.value)
    model = trained_batchnorm(small_cnn(), torch.rand(8, 3, 12, 12))
    with pytest.raises(ConvertSNNError, match="needs the model's input size"):
        convert(model, None, 4, "synthetic")


def test_synthetic_from_the_command_line_needs_no_data(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic.SyntheticImages, "steps", 5)
    monkeypatch.setattr(synthetic.SyntheticImages, "images", 8)
    torch.manual_seed(0)
    ann = save_ann(create_model("resnet20"), tmp_path / "r20.safetensors", "resnet20", {},
                   Preprocessing((0.5,) * 3, (0.25,) * 3, (3, 32, 32), 10))  # fmt: skip
    out = tmp_path / "snn.safetensors"
    args = ["convert", str(ann), "-T", "2", "--calibration", "synthetic", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "calibration synthetic:delay:biascal:mse" in result.output
    assert load_snn(out).metadata["readout_delay"]["images"] == 8
