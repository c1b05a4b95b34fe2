"""The models shipped in model_zoo/: verified, small, listed, and their clean accuracy reproduced."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from convertsnn import zoo
from convertsnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "model_zoo" / "index.yaml"
SAMPLE = ROOT / "convertsnn" / "assets" / "mnist_sample.npz"


def test_shipped_entries_are_verified_small_and_rebuildable():
    index = zoo.load_index(INDEX)
    assert index.entries
    for entry in index.entries.values():
        path = zoo.pull(entry.name, index=INDEX)  # sha256 checked
        assert path.parent == INDEX.parent and path.stat().st_size == entry.size
        assert entry.size < 1_000_000, "shipped models must stay small"
        assert entry.recipe_file() is not None and entry.recipe_file().is_file()
        assert entry.metrics and all(m.command.startswith("convertsnn ") for m in entry.metrics)
    result = CliRunner().invoke(main, ["zoo", "--index", str(INDEX), "list"])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in index.entries)


def test_demo_snn_reproduces_its_recorded_clean_accuracy(tmp_path):
    """`convertsnn evaluate zoo:NAME` on the shipped sample gives the accuracy the index records
    for those images (the first 1,000 MNIST test images), within 0.5 points."""
    entry = zoo.model_info("mnist_cnn_pgd_snn_t8", index=INDEX)
    recorded = next(m for m in entry.metrics if "mnist_sample.npz" in m.data).values["clean"]
    out = tmp_path / "clean.json"
    result = CliRunner().invoke(main, ["evaluate", "zoo:mnist_cnn_pgd_snn_t8", "--data", str(SAMPLE),
                                       "--no-ann", "--device", "cpu", "--out", str(out)],
                                env={"CONVERTSNN_ZOO_INDEX": str(INDEX)})  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "SNN T=8"
    assert abs(row["clean"] - recorded) <= 0.005, (row["clean"], recorded)
