"""Running the command line in tests and checking its one-line errors."""

from __future__ import annotations

from click.testing import CliRunner, Result

from convertsnn.cli import main


def run_cli(*args) -> Result:
    """``convertsnn ARGS...`` in-process (arguments may be paths or numbers)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, message: str) -> None:
    """The command failed with exit code 1 and printed exactly ``Error: ...`` with ``message``."""
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert message in result.output
