"""Running the command line in tests and checking its one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner, Result

from convertsnn.cli import main
from convertsnn.importers import Preprocessing
from convertsnn.importers.checkpoint import save_ann
from convertsnn.models import create_model
from tests.conftest import write_npz


def run_cli(*args) -> Result:
    """``convertsnn ARGS...`` in-process (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, message: str) -> None:
    """The command failed with exit code 1 and printed exactly ``Error: ...`` with ``message``."""
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert message in result.output


def convert_command(folder: Path) -> tuple[list, Path]:
    """``convertsnn convert`` arguments for a tiny MNIST CNN file with 24 calibration images
    written to ``folder`` (T = 4, max calibration), and the output file they name."""
    torch.manual_seed(0)
    ann = save_ann(create_model("mnist_cnn", width=4), folder / "ann.safetensors", "mnist_cnn",
                   {"width": 4}, Preprocessing((0.13,), (0.31,), (1, 28, 28), 10))  # fmt: skip
    data = write_npz(folder / "d.npz", n=24, shape=(28, 28))
    out = folder / "snn.safetensors"
    return ["convert", ann, "--calib", data, "-T", "4", "--calibration", "max", "-o", out], out
