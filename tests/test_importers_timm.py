"""timm importer: local weights (safetensors / torch), preprocessing from timm's data config,
classifier size from the file, conversion, one-line errors. The hub path is not exercised."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.layers import Normalize
from convertsnn.snn.serialize import load_snn
from tests.conftest import write_npz

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import timm


@pytest.fixture(scope="module")
def resnet10t():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=10).eval()


@pytest.fixture(scope="module")
def weights(resnet10t, tmp_path_factory):
    path = tmp_path_factory.mktemp("timm") / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in resnet10t.state_dict().items()}, str(path))
    return path


def test_local_weights_load_with_timm_preprocessing(resnet10t, weights):
    ann = load_ann("timm:resnet10t", weights=weights)
    config = timm.data.resolve_data_config({}, model=resnet10t)
    assert ann.preprocessing.mean == tuple(config["mean"])
    assert ann.preprocessing.input_size == tuple(config["input_size"])
    assert ann.preprocessing.num_classes == 10  # read from the file's classifier, not 1000
    assert isinstance(ann.model[0], Normalize)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(ann.model(x), resnet10t((x - mean) / std))
    assert ann.source == {
        "type": "timm",
        "name": "resnet10t",
        "weights": "resnet10t.safetensors",
        "model_kwargs": {"num_classes": 10},
    }


def test_torch_state_dict_weights_and_overrides(resnet10t, tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": resnet10t.state_dict()}, path)
    override = Preprocessing(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5))
    ann = load_ann("timm:resnet10t", weights=path, preprocessing=override)
    assert ann.preprocessing.input_size == (3, 32, 32)
    assert ann.preprocessing.mean == (0.5, 0.5, 0.5) and ann.preprocessing.std[0] == 0.229


def test_cli_converts_a_timm_model(weights, tmp_path):
    calib = write_npz(tmp_path / "calib.npz", n=4, shape=(32, 32, 3))
    out = tmp_path / "snn.safetensors"
    result = CliRunner().invoke(
        main,
        ["convert", "timm:resnet10t", "--weights", str(weights), "--input-size", "3,32,32",
         "--calib", str(calib), "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    snn = load_snn(out)
    assert snn.metadata["source"]["name"] == "resnet10t" and snn.input_size == (3, 32, 32)
    with torch.no_grad():
        assert snn(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_silu_model_is_refused_at_conversion(tmp_path):
    from convertsnn.convert.graph import prepare_ann

    model = timm.create_model("resnet10t", num_classes=10, act_layer="silu")
    path = tmp_path / "silu.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ann = load_ann("timm:resnet10t", weights=path, arch_kwargs={"act_layer": "silu"})
    with pytest.raises(ConvertSNNError, match="SiLU/Swish is not a ReLU"):
        prepare_ann(ann.model)


def test_errors_are_one_line(weights, tmp_path):
    with pytest.raises(ConvertSNNError, match="timm has no model 'resnet10x'"):
        load_ann("timm:resnet10x", weights=weights)
    with pytest.raises(ConvertSNNError, match="does not fit timm model 'resnet18'"):
        load_ann("timm:resnet18", weights=weights)
    with pytest.raises(ConvertSNNError, match="weights file not found"):
        load_ann("timm:resnet10t", weights=tmp_path / "missing.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(ConvertSNNError, match="weights_only=True"):
        load_ann("timm:resnet10t", weights=pickled)


def test_timm_can_use_the_installed_huggingface_hub():
    """timm reaches the hub (so download failures say why), not "pip install huggingface_hub":
    pyproject's huggingface_hub range fits the timm robustbench pins."""
    import timm.models._hub

    assert timm.models._hub._has_hf_hub
