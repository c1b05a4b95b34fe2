"""What a new user meets first: offline MNIST, zoo models everywhere, quiet output, files
left by a killed writer cleaned up."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from convertsnn.cli import main, quiet_warnings
from convertsnn.data import datasets, load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import load_ann
from convertsnn.importers import timm as timm_importer
from convertsnn.snn.serialize import TEMP_SUFFIX, atomic_write, load_snn
from tests.conftest import write_npz

ASSETS = Path(__file__).resolve().parents[1] / "convertsnn" / "assets"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(datasets, "why_unreachable", lambda host, timeout=3.0: "no network")
    monkeypatch.setattr(timm_importer, "why_unreachable", lambda host, timeout=3.0: "no network")


def test_mnist_offline_falls_back_to_the_shipped_sample(offline, tmp_path):
    with pytest.warns(UserWarning, match="using the MNIST sample shipped with convertsnn"):
        test = load_dataset("mnist", split="test", data_dir=tmp_path)
    assert len(test) == 1000 and test.image_size == (1, 28, 28)
    assert test.name == "mnist_sample.npz:test"


def test_other_datasets_offline_fail_at_once(offline, tmp_path):
    start = time.monotonic()
    with pytest.raises(ConvertSNNError, match=r"cifar10 is not in .* cannot be downloaded"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert time.monotonic() - start < 5


def test_readme_mnist_command_runs_offline(offline, tmp_path):
    """The README's zoo example (`--data mnist`) works without a network: one warning line."""
    result = CliRunner().invoke(
        main,
        ["evaluate", "zoo:mnist_cnn_pgd_snn_t8", "--data", "mnist", "--data-dir", str(tmp_path),
         "--limit", "20", "--no-sanity"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.output.splitlines() if "Warning" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("Warning: MNIST is not in")
    assert "warnings.warn" not in result.output and "UserWarning" not in result.output


def test_finetune_takes_a_zoo_model(tmp_path):
    data = ASSETS / "mnist_sample.npz"
    result = CliRunner().invoke(
        main,
        ["finetune", "zoo:mnist_cnn_pgd_snn_t8", "--data", str(data), "--train-images", "16",
         "--epochs", "1", "--batch-size", "16", "--val-fraction", "0", "--objective", "natural",
         "-T", "2", "--out-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    snn = load_snn(tmp_path / "run" / "last.safetensors")
    assert snn.metadata["finetune"]["model"] == "zoo:mnist_cnn_pgd_snn_t8"


def test_no_progress_bars_in_logs(tmp_path):
    """Output that is not a terminal (a log, CI, CliRunner) gets no tqdm bars."""
    calib = write_npz(tmp_path / "calib.npz", n=8, shape=(28, 28))
    result = CliRunner().invoke(
        main,
        ["convert", str(ASSETS / "mnist_cnn_pgd.safetensors"), "--calib", str(calib),
         "-o", str(tmp_path / "snn.safetensors")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "calibrating" not in result.output and "it/s" not in result.output
    assert result.output.count("\n") == 1


def test_warnings_are_one_line_and_torch_jit_noise_is_off(capsys):
    with warnings.catch_warnings():
        quiet_warnings()
        warnings.warn("`torch.jit.interface` is deprecated.", FutureWarning, stacklevel=1)
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "Warning: first line second line\n"


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from convertsnn.snn.serialize import atomic_write

    def write(tmp):
        Path(tmp).write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)

    atomic_write(Path(sys.argv[1]), write)
    """
)


def test_temporary_files_of_a_killed_writer_are_swept(tmp_path):
    """SIGKILL mid-write leaves a hidden temporary file; the next write to the folder removes it
    (and leaves the temporary files of live writers alone)."""
    target = tmp_path / "model.safetensors"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftovers = list(tmp_path.glob(f".*{TEMP_SUFFIX}"))
    assert len(leftovers) == 1 and not target.exists()
    live = tmp_path / f".other.{platform.node()}-1.abc{TEMP_SUFFIX}"
    live.write_text("pid 1 is alive")
    atomic_write(tmp_path / "other.txt", lambda tmp: Path(tmp).write_text("ok"))
    assert not leftovers[0].exists() and live.exists()
    assert (tmp_path / "other.txt").read_text() == "ok"


def test_demo_next_hint_runs_offline(offline, tmp_path, monkeypatch):
    """The demo's "next" commands (convert the demo model with --calib mnist, evaluate on
    --data mnist) work without a network, on the shipped sample."""
    monkeypatch.chdir(tmp_path)
    model = ASSETS / "mnist_cnn_pgd.safetensors"
    result = CliRunner().invoke(
        main, ["convert", str(model), "--calib", "mnist", "--data-dir", str(tmp_path),
               "-o", "snn.safetensors", "-T", "4"],
    )  # fmt: skip
    assert result.exit_code == 0 and (tmp_path / "snn.safetensors").is_file(), result.output
    result = CliRunner().invoke(
        main, ["evaluate", "snn.safetensors", "--data", "mnist", "--data-dir", str(tmp_path),
               "--limit", "20", "--no-sanity", "--attack", "fgsm", "--eps", "0.1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_timm_download_offline_fails_at_once(offline):
    start = time.monotonic()
    with pytest.raises(
        ConvertSNNError, match=r"huggingface\.co cannot be reached .* --weights FILE"
    ):
        load_ann("timm:resnet18")
    assert time.monotonic() - start < 10
