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
            "--suite-images",
            "20",
            "--suite-timesteps",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    result_json = json.loads(out.read_text())
    rows = {r["model"]: r for r in result_json["rows"]}
    assert set(rows) == {"ANN", "SNN T=2", "SNN T=8"}
    assert rows["ANN"]["clean"] >= 0.9
    assert rows["SNN T=8"]["clean"] >= 0.85
    for row in rows.values():
        assert 0 <= row["robust"]["0.1"] <= row["clean"]
    # the honest number next to PGD through one surrogate: the quick suite, ANN and SNN
    suite = result_json["suite"]
    assert (suite["name"], suite["images"]) == ("quick", 20)
    suite_rows = {r["model"]: r for r in suite["rows"]}
    assert set(suite_rows) == {"ANN", "SNN T=2"}
    for row in suite_rows.values():
        assert 0 <= row["robust"]["0.1"] <= row["clean"]
        assert row["details"]["0.1"]["suite"] == "quick"
    assert "SNN T=2 minus ANN:" in result.output and "under the quick suite" in result.output


def test_demo_rejects_more_suite_images_than_images():
    result = CliRunner().invoke(main, ["demo", "--images", "10", "--suite-images", "11"])
    assert result.exit_code == 1
    assert "--suite-images must be between 0 and --images (10)" in result.output
