"""The embedded default: shipped real MNIST sample and robust CNN, converted and attacked."""

import json

from click.testing import CliRunner

from convertsnn.cli import main
from convertsnn.cli.demo import DEMO_DATA, DEMO_MODEL
from convertsnn.data import load_dataset


def test_shipped_assets_are_small_and_real():
    size = DEMO_MODEL.stat().st_size + DEMO_DATA.stat().st_size
    assert size < 600_000
    test = load_dataset(str(DEMO_DATA), split="test")
    train = load_dataset(str(DEMO_DATA), split="train")
    assert (len(train), len(test)) == (256, 1000)
    assert test.image_size == (1, 28, 28)
    # the first MNIST test labels (official order)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_demo_runs_offline_and_reports_ann_and_snn(tmp_path):
    out = tmp_path / "demo.json"
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--images",
            "40",
            "-T",
            "2,8",
            "--steps",
            "3",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ANN", "SNN T=2", "SNN T=8"}
    assert rows["ANN"]["clean"] >= 0.9
    assert rows["SNN T=8"]["clean"] >= 0.85
    for row in rows.values():
        assert 0 <= row["robust"]["0.1"] <= row["clean"]
