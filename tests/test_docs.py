"""The documentation site builds with `mkdocs build --strict`: broken references, missing pages
and docstrings that disagree with their signatures fail the test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "check_dataset_fits" in api and "v_init" in api  # the reference comes from docstrings
    assert (tmp_path / "site" / "results" / "bad_inputs" / "index.html").is_file()
    assert (tmp_path / "site" / "index.html").read_text().count("convertsnn demo") >= 1
