"""The pipeline recipes under recipes/ parse, and their train/finetune settings validate."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from convertsnn.cli import main
from convertsnn.cli.convert import default_calibration
from convertsnn.cli.finetune import settings_from
from convertsnn.convert.calibration import get_calibration
from convertsnn.finetune import FinetuneConfig, TrainConfig
from convertsnn.snn.serialize import load_snn
from convertsnn.zoo.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = [
    *sorted((ROOT / "recipes").glob("*/*.yaml")),
    ROOT / "recipes" / "robust_conversion.yaml",
    ROOT / "recipes" / "robust_rslad_dither.yaml",
    ROOT / "recipes" / "robust_dither.yaml",
]
CONFIGS = {"train": TrainConfig, "finetune": FinetuneConfig}


def test_there_are_gpu_and_zoo_pipelines():
    folders = {p.parent.name for p in PIPELINES}
    assert {"gpu", "zoo"} <= folders
    assert len([p for p in PIPELINES if p.parent.name == "gpu"]) >= 12


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pipeline_steps_parse_and_settings_validate(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["zoo", "build", str(path), "--dry-run",
                                       "--data-root", str(tmp_path), "--work-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dry run: every step parses" in result.output
    parent = click.Context(main, info_name="convertsnn")
    for step in load_pipeline(path).steps:
        args = shlex.split(step)[1:]
        if args[0] not in CONFIGS:
            continue
        params = dict(main.get_command(parent, args[0]).make_context(args[0], args[1:]).params)
        recipe = params.pop("recipe")
        params.pop("json_out")
        if recipe:
            assert (ROOT / recipe).is_file(), recipe
        CONFIGS[args[0]].from_dict(settings_from(recipe, params), where=step)


ZOO_FILES = sorted((ROOT / "model_zoo").glob("*.safetensors"))


@pytest.mark.parametrize("file", ZOO_FILES, ids=lambda p: p.stem)
def test_zoo_recipe_converts_with_the_calibration_and_images_its_file_records(file):
    """A default that changes later must not change what a zoo recipe rebuilds."""
    parent = click.Context(main, info_name="convertsnn")
    steps = load_pipeline(ROOT / "recipes" / "zoo" / f"{file.stem}.yaml").steps
    args = next(shlex.split(s)[2:] for s in steps if shlex.split(s)[1] == "convert")
    params = main.get_command(parent, "convert").make_context("convert", args).params
    spec = params["calibration"] or default_calibration(
        params["calib_images"] if params["calib_data"] else None
    )
    metadata = load_snn(file).metadata
    assert str(get_calibration(spec)) == metadata["conversion"]["calibration"]
    assert params["calib_images"] == metadata["calibration_data"]["images"]
