import json
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convertsnn.cli import COMMANDS, _Group, main
from convertsnn.importers import Preprocessing, save_ann
from convertsnn.models import create_model, register_model
from tests.conftest import write_npz


@register_model
def _test_gelu_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes)
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def ann_file(tmp_path):
    torch.manual_seed(0)
    net = create_model("mnist_cnn", width=4)
    return save_ann(net, tmp_path / "ann.safetensors", "mnist_cnn", {"width": 4},
                    Preprocessing((0.13,), (0.31,), (1, 28, 28), 10))  # fmt: skip


@pytest.fixture
def data(tmp_path):
    return write_npz(tmp_path / "mnist_like.npz", n=24, shape=(28, 28))


def assert_clean_error(result, message: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.output


def test_help_lists_the_commands(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("convert", "evaluate", "demo", "models"):
        assert name in result.output


def test_train_help_lists_only_the_regularizers_an_ann_can_take(runner):
    lines = {}
    for command in ("train", "finetune"):
        result = runner.invoke(main, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        lines[command] = next(x for x in result.output.splitlines() if "--regularizer TEXT" in x)
    assert lines["train"].rstrip().endswith("(repeatable): sparsity.")
    assert (
        lines["finetune"].rstrip().endswith("(repeatable): distill, layer-distill, mppd, sparsity.")
    )


def test_convert_then_evaluate(runner, ann_file, data, tmp_path):
    out = tmp_path / "snn.safetensors"
    result = runner.invoke(main, ["convert", str(ann_file), "--calib", str(data), "-T", "4",
                                  "--calibration", "max", "-o", str(out), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and "3 spiking layers" in result.output
    report = tmp_path / "r.json"
    result = runner.invoke(main, ["evaluate", str(out), "--data", str(data), "-T", "2,4",
                                  "--attack", "pgd", "--eps", "8/255", "--steps", "2",
                                  "--out", str(report), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "SNN T=2" in result.output and "SNN T=4" in result.output and "ANN" in result.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["model"] for r in rows] == ["ANN", "SNN T=2", "SNN T=4"]
    assert all(set(r["robust"]) == {f"{8 / 255:.6g}"} for r in rows)
    assert all(r["robust"][f"{8 / 255:.6g}"] <= r["clean"] for r in rows)


def test_missing_file(runner, tmp_path, data):
    result = runner.invoke(main, ["convert", str(tmp_path / "nope.pt"), "--calib", str(data)])
    assert_clean_error(result, "not found")
    result = runner.invoke(
        main, ["evaluate", str(tmp_path / "nope.safetensors"), "--data", str(data)]
    )
    assert_clean_error(result, "not found")


def test_file_that_is_not_a_checkpoint(runner, tmp_path, data):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"these are not weights")
    result = runner.invoke(main, ["convert", str(bad), "--arch", "mnist_cnn", "--calib", str(data)])
    assert_clean_error(result, "is not a torch checkpoint")
    bad_snn = tmp_path / "model.safetensors"
    bad_snn.write_bytes(b"\x00" * 50)
    result = runner.invoke(main, ["evaluate", str(bad_snn), "--data", str(data)])
    assert_clean_error(result, "not a readable safetensors file")


def test_plain_state_dict_needs_arch(runner, tmp_path, data):
    path = tmp_path / "plain.pt"
    torch.save(create_model("mnist_cnn").state_dict(), path)
    assert_clean_error(runner.invoke(main, ["convert", str(path), "--calib", str(data)]), "--arch")
    result = runner.invoke(main, ["convert", str(path), "--arch", "resnet20", "--calib", str(data)])
    assert_clean_error(result, "does not fit architecture 'resnet20'")


def test_unsupported_layer(runner, tmp_path, data):
    path = tmp_path / "gelu.pt"
    torch.save(create_model("_test_gelu_net").state_dict(), path)
    result = runner.invoke(
        main, ["convert", str(path), "--arch", "_test_gelu_net", "--calib", str(data)]
    )
    assert_clean_error(result, "GELU is not a ReLU")


def test_images_of_the_wrong_shape(runner, ann_file, data, tmp_path):
    out = tmp_path / "snn.safetensors"
    runner.invoke(main, ["convert", str(ann_file), "--calib", str(data), "-o", str(out)])
    cifar_like = write_npz(tmp_path / "rgb.npz", n=8, shape=(32, 32, 3))
    result = runner.invoke(main, ["evaluate", str(out), "--data", str(cifar_like)])
    assert_clean_error(result, "but the model expects (1, 28, 28)")
    result = runner.invoke(main, ["convert", str(ann_file), "--calib", str(cifar_like)])
    assert_clean_error(
        result, "calibration images are (3, 32, 32) but the model expects (1, 28, 28)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-T", "0"], "--timesteps must be an integer from 1 to 4096"),
        (["--calibration", "median"], "unknown calibration"),
        (["--surrogate", "boxcar"], "unknown surrogate"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bad_convert_options(runner, ann_file, data, args, message):
    result = runner.invoke(main, ["convert", str(ann_file), "--calib", str(data), *args])
    assert_clean_error(result, message)


def test_bad_evaluate_options(runner, ann_file, data, tmp_path):
    out = tmp_path / "snn.safetensors"
    runner.invoke(main, ["convert", str(ann_file), "--calib", str(data), "-o", str(out)])
    assert_clean_error(runner.invoke(main, ["evaluate", str(out), "--data", str(data), "-T", "4,x"]),
                       "positive integers")  # fmt: skip
    result = runner.invoke(main, ["evaluate", str(out), "--data", str(data), "--attack", "pgd",
                                  "--eps", "eight"])  # fmt: skip
    assert_clean_error(result, "is not a number")


def test_a_closed_pipe_stops_quietly(runner):
    """`convertsnn ... | head`: the reader going away is no internal error."""
    group = _Group()

    @group.command()
    def talk() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result = runner.invoke(group, ["talk"])
    assert result.exit_code == 1 and result.output == ""


def test_command_list_matches_the_commands():
    """`convertsnn --help` lists every command with its own short help, without loading it."""
    ctx = click.Context(main)
    assert sorted(COMMANDS) == sorted(main.list_commands(ctx))
    for name, (_, text) in COMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(limit=1000) == text, name
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name}  " in listed for name in COMMANDS)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = (
        f"import sys\nfrom convertsnn.cli import main\ntry:\n    main([{flag!r}])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "convertsnn" in result.stdout
