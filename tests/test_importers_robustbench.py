"""RobustBench importer: checkpoints in RobustBench's own layout load offline through
robustbench.utils.load_model and convert; Swish is refused; bad specs and unsafe or mismatched
checkpoints give one-line errors; the autoattack / pkg_resources shims work."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest
import torch
from click.testing import CliRunner

from convertsnn._compat.robustbench import import_robustbench, install_pkg_resources_shim
from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import load_ann
from convertsnn.snn.serialize import load_snn
from tests.conftest import write_npz

PREACT = "Wong2020Fast"  # PreActResNet-18 with its normalisation inside the model
SWISH = "Rebuffi2021Fixing_R18_ddpm"  # DM PreActResNet-18 with Swish


def _zoo_model(name: str) -> torch.nn.Module:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]().eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A RobustBench model_dir holding random-weight checkpoints: model_dir/cifar10/Linf/NAME.pt."""
    root = tmp_path_factory.mktemp("robustbench")
    (root / "cifar10" / "Linf").mkdir(parents=True)
    for name in (PREACT, SWISH):
        torch.save(
            {"state_dict": _zoo_model(name).state_dict()}, root / "cifar10" / "Linf" / f"{name}.pt"
        )
    return root


def test_loads_offline_from_model_dir(model_dir):
    ann = load_ann(f"robustbench:cifar10/Linf/{PREACT}", model_dir=model_dir)
    assert ann.preprocessing.input_size == (3, 32, 32) and ann.preprocessing.num_classes == 10
    assert ann.preprocessing.mean is None  # normalisation is inside RobustBench's model
    assert ann.source == {
        "type": "robustbench",
        "dataset": "cifar10",
        "threat_model": "Linf",
        "name": PREACT,
    }
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ann.model(x), _zoo_model(PREACT)(x))


def test_cli_converts_preact_resnet18_and_refuses_swish(model_dir, tmp_path):
    calib = write_npz(tmp_path / "calib.npz", n=4, shape=(32, 32, 3))
    out = tmp_path / "preact.safetensors"
    result = CliRunner().invoke(
        main,
        ["convert", f"robustbench:cifar10/Linf/{PREACT}", "--model-dir", str(model_dir),
         "--calib", str(calib), "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    snn = load_snn(out)
    assert snn.metadata["source"]["name"] == PREACT and len(list(snn.neurons())) == 16
    result = CliRunner().invoke(
        main,
        ["convert", f"robustbench:cifar10/Linf/{SWISH}", "--model-dir", str(model_dir),
         "--calib", str(calib)],
    )  # fmt: skip
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "is not a ReLU" in result.output and "retrain or finetune" in result.output


def test_unsafe_and_mismatched_checkpoints_are_one_line(tmp_path):
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, folder / "Sehwag2021Proxy_R18.pt")
    with pytest.raises(ConvertSNNError, match="does not fit RobustBench model"):
        load_ann("robustbench:cifar10/Linf/Sehwag2021Proxy_R18", model_dir=tmp_path)
    torch.save({"args": argparse.Namespace(lr=0.1)}, folder / "Andriushchenko2020Understanding.pt")
    with pytest.raises(ConvertSNNError, match="weights_only=True"):
        load_ann("robustbench:cifar10/Linf/Andriushchenko2020Understanding", model_dir=tmp_path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cifar10/Linf", "should be DATASET/THREAT/NAME"),
        ("mnist/Linf/X", "unknown RobustBench dataset 'mnist'"),
        ("cifar10/L3/X", "unknown RobustBench threat model 'L3'"),
        ("cifar10/Linf/Carmon2019", "RobustBench has no model 'Carmon2019'"),
    ],
)
def test_bad_specs(spec, message):
    result = CliRunner().invoke(main, ["convert", f"robustbench:{spec}"])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1


def test_autoattack_alias_and_pkg_resources_shim(monkeypatch):
    import_robustbench()
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState

    assert AutoAttack.__module__ == "pyautoattack.autoattack"
    assert EvaluationState.__module__ == "pyautoattack.state"
    # as with setuptools >= 81, which has no pkg_resources
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pkg_resources" else real_find_spec(name, *a),
    )
    install_pkg_resources_shim()
    shim = sys.modules["pkg_resources"]
    assert shim.resource_filename("robustbench", "model_zoo").endswith("robustbench/model_zoo")


class _Payload:
    """Unpickling this runs code: it writes the marker file named in ``path``."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("force_unsafe", ["0", "1"])
def test_malicious_checkpoint_never_runs(tmp_path, monkeypatch, force_unsafe):
    """A pickle payload in a RobustBench checkpoint is refused, even when the environment asks
    torch for unsafe loads (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, as torch < 2.6 did by default)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_unsafe)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    torch.save({"state_dict": _Payload(marker)}, folder / f"{PREACT}.pt")
    with pytest.raises(ConvertSNNError, match="cannot be loaded safely with weights_only=True"):
        load_ann(f"robustbench:cifar10/Linf/{PREACT}", model_dir=tmp_path)
    assert not marker.exists()
