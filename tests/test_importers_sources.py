"""Source syntax shared by the CLI and load_ann: dispatch, option checks, output names."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import load_ann, parse_source, source_stem


@pytest.mark.parametrize(
    "source, kind, reference",
    [
        ("model.onnx", "onnx", "model.onnx"),
        ("dir/Model.ONNX", "onnx", "dir/Model.ONNX"),
        ("ckpt.pth", "checkpoint", "ckpt.pth"),
        ("ann.safetensors", "checkpoint", "ann.safetensors"),
        ("timm:resnet18.a1_in1k", "timm", "resnet18.a1_in1k"),
        (
            "robustbench:cifar10/Linf/Carmon2019Unlabeled",
            "robustbench",
            "cifar10/Linf/Carmon2019Unlabeled",
        ),
        ("zoo:resnet20-pgd", "zoo", "resnet20-pgd"),
    ],
)
def test_parse_source(source, kind, reference):
    assert parse_source(source) == (kind, reference)


def test_source_stem_is_a_file_name():
    assert source_stem("timm:resnet18.a1_in1k") == "resnet18.a1_in1k"
    assert source_stem("robustbench:cifar10/Linf/Carmon2019Unlabeled") == "Carmon2019Unlabeled"
    assert source_stem("models/net.onnx") == "net"


def test_unknown_sources_and_misplaced_options(tmp_path):
    with pytest.raises(ConvertSNNError, match=r"source not found: nope\.xyz; give a \.onnx file"):
        parse_source("nope.xyz")
    (tmp_path / "model.xyz").write_text("x")
    with pytest.raises(ConvertSNNError, match="cannot tell what kind of model"):
        parse_source(str(tmp_path / "model.xyz"))
    with pytest.raises(ConvertSNNError, match="names no model after 'timm:'"):
        parse_source("timm:")
    with pytest.raises(ConvertSNNError, match="--weights applies to timm sources"):
        load_ann("robustbench:cifar10/Linf/Standard", weights="w.pth")
    with pytest.raises(ConvertSNNError, match="--model-dir applies to robustbench sources"):
        load_ann("timm:resnet18", model_dir="models")
    result = CliRunner().invoke(main, ["convert", "net.onnx", "--arch", "resnet20"])
    assert result.exit_code == 1
    assert result.output == "Error: --arch applies to checkpoint sources, not to 'net.onnx'\n"


def test_zoo_sources_go_to_the_zoo():
    pytest.importorskip("convertsnn.zoo.loading")
    with pytest.raises(ConvertSNNError):
        load_ann("zoo:no-such-model")
