"""ONNX importer: torch exports (dynamo and legacy), hand-built files in the style of other
tools (opset 9 with a fixed batch of 1, NHWC), external data, conversion, one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.importers import load_ann
from convertsnn.importers.onnx import load_onnx
from convertsnn.layers import Normalize
from convertsnn.snn.serialize import load_snn
from tests.conftest import randomise_batchnorm, write_npz
from tests.onnx_files import nhwc_file, opset9_fixed_batch_file, run_ort, save_model


class SmallNet(nn.Module):
    """Conv-BN-ReLU, max pool, a ReLU6 residual branch, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.branch = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU6())
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.branch(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(SmallNet())


def _single_op_file(path: Path, node, opset: int = 17, shape=(1, 3, 4, 4)) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, list(shape))
    return save_model([node], [x], [y], {}, path, opset)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


# ---- torch exports ---------------------------------------------------------------------------


def test_dynamo_export_with_dynamic_batch_matches_onnxruntime(small_net, tmp_path):
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            small_net, (torch.rand(2, 3, 8, 8),), str(path),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
        )  # fmt: skip
    ann = load_onnx(path)
    assert ann.source["fixed_batch"] is None and ann.source["opset"] >= 18
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        ours = ann.model(x).numpy()
        original = small_net(x).numpy()
    assert np.abs(ours - run_ort(path, x.numpy())).max() <= 1e-4
    assert np.abs(ours - original).max() <= 1e-4


def test_legacy_opset9_export_with_batch_one_runs_any_batch(small_net, tmp_path):
    path = tmp_path / "legacy9.onnx"
    torch.onnx.export(
        small_net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=9
    )
    ann = load_ann(str(path))
    assert ann.source["opset"] == 9 and ann.source["fixed_batch"] == 1
    assert ann.preprocessing.input_size == (3, 8, 8) and ann.preprocessing.num_classes == 4
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        ours = ann.model(x).numpy()
    assert np.abs(ours - run_ort(path, x.numpy(), chunk=1)).max() <= 1e-4


def test_external_data_file_loads_and_a_missing_data_file_is_one_line(small_net, tmp_path):
    path = tmp_path / "ext.onnx"
    torch.onnx.export(
        small_net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17
    )
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    assert (tmp_path / "ext.data").is_file()
    ann = load_onnx(path)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert np.abs(ann.model(x).numpy() - small_net(x).numpy()).max() <= 1e-4
    (tmp_path / "ext.data").unlink()
    result = _cli("convert", str(path))
    assert result.exit_code == 1 and result.output.startswith("Error: cannot import ext.onnx")
    assert result.output.count("\n") == 1


# ---- files in the style of other tools --------------------------------------------------------


def test_opset9_fixed_batch_file_imports_matches_and_converts(tmp_path):
    path = opset9_fixed_batch_file(tmp_path / "old.onnx")
    ann = load_onnx(path)
    assert ann.source["removed_output"] == "Softmax" and ann.source["fixed_batch"] == 1
    # the graph's Sub/Div input normalisation became the model's preprocessing
    assert ann.source["normalization_from_graph"]
    assert ann.preprocessing.mean == (0.4, 0.5, 0.6) and ann.preprocessing.std == (0.2, 0.25, 0.3)
    assert isinstance(ann.model[0], Normalize)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        ours = ann.model(x).numpy()
    reference = _ort_logits(path, x.numpy())
    assert np.abs(ours - reference).max() <= 1e-4
    calib = write_npz(tmp_path / "calib.npz", n=8, shape=(8, 8, 3))
    out = tmp_path / "old_snn.safetensors"
    result = _cli("convert", str(path), "--timesteps", "8", "--calib", str(calib), "-o", str(out))
    assert result.exit_code == 0, result.output
    snn = load_snn(out)
    assert [type(n).__name__ for n in snn.neurons()] == ["IFNeuron"] * 2  # ReLU6 and ReLU
    with torch.no_grad():
        assert snn(x).shape == (4, 5)
    assert snn.metadata["source"]["fixed_batch"] == 1


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """The logits before the output Softmax, one image at a time (fixed batch 1)."""
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_value_info("logits", onnx.TypeProto()))
    patched = path.with_name("patched.onnx")
    onnx.save(model, str(patched))
    return run_ort(patched, x, output="logits", chunk=1)


def test_nhwc_file_takes_nchw_images_matches_and_converts(tmp_path):
    path = nhwc_file(tmp_path / "nhwc.onnx")
    ann = load_onnx(path)
    assert ann.source["input_layout"] == "NHWC" and ann.preprocessing.input_size == (3, 8, 8)
    assert ann.preprocessing.mean == (0.5, 0.4, 0.3) and ann.preprocessing.std == (0.25, 0.2, 1 / 3)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        ours = ann.model(x).numpy()
    assert np.abs(ours - run_ort(path, x.permute(0, 2, 3, 1).numpy())).max() <= 1e-4
    methods = {n.target for n in ann.model[1].graph.nodes if n.op == "call_method"}
    assert "permute" in methods  # the flatten of the channels-last tensor keeps its order
    calib = write_npz(tmp_path / "calib.npz", n=8, shape=(8, 8, 3))
    out = tmp_path / "nhwc_snn.safetensors"
    result = _cli("convert", str(path), "--calib", str(calib), "-o", str(out))
    assert result.exit_code == 0, result.output
    snn = load_snn(out)
    with torch.no_grad(), snn.gradient("ann"):
        assert torch.allclose(snn(x), torch.from_numpy(ours), atol=1e-4)
    with torch.no_grad():
        assert snn(x).shape == (5, 5)


def test_metadata_mean_std_become_a_normalize_layer(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _single_op_file(tmp_path / "meta.onnx", node)
    model = onnx.load(str(path))
    helper.set_model_props(model, {"mean": "0.5,0.5,0.5", "std": "[0.25, 0.25, 0.25]"})
    onnx.save(model, str(path))
    ann = load_onnx(path)
    assert ann.preprocessing.mean == (0.5, 0.5, 0.5) and ann.preprocessing.std == (0.25,) * 3
    assert isinstance(ann.model[0], Normalize)
    x = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(ann.model(x), torch.relu((x - 0.5) / 0.25))


# ---- refusals and errors ----------------------------------------------------------------------


def test_leaky_relu_imports_faithfully_but_conversion_refuses_it(tmp_path):
    path = _single_op_file(
        tmp_path / "leaky.onnx", helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)
    )
    ann = load_onnx(path)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(ann.model(x), torch.nn.functional.leaky_relu(x, 0.1))
    calib = write_npz(tmp_path / "calib.npz", n=4, shape=(4, 4, 3))
    result = _cli("convert", str(path), "--calib", str(calib))
    assert result.exit_code == 1
    assert "LeakyReLU is not a ReLU" in result.output and result.output.count("\n") == 1


def test_unknown_op_names_op_opset_and_node(tmp_path):
    node = helper.make_node("Softsign", ["x"], ["y"], name="Softsign_3")
    path = _single_op_file(tmp_path / "model.onnx", node)
    result = _cli("convert", str(path))
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: cannot import model.onnx: op 'Softsign' (opset 17) at node 'Softsign_3' is not "
        "supported; "
    )
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "not a readable ONNX model"),
        ("random", "cannot import bad.onnx"),
        ("opset7", "uses ONNX opset 7, but convertsnn imports opsets 9-21"),
        ("opset9-clip-inputs", "is not valid ONNX"),
    ],
)
def test_malformed_files_give_one_line_errors(small_net, tmp_path, damage, message):
    path = tmp_path / "bad.onnx"
    if damage in ("truncate", "random"):
        torch.onnx.export(small_net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False)
        data = path.read_bytes()
        rng = np.random.default_rng(0)
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else rng.bytes(len(data)))
    elif damage == "opset7":
        _single_op_file(path, helper.make_node("Relu", ["x"], ["y"]), opset=7)
    else:  # Clip takes its bounds as inputs only from opset 11 on
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])
        bounds = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
        save_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [x], [y], bounds, path, 9)
    result = _cli("convert", str(path))
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot import bad.onnx") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_reshape_that_mixes_the_batch_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="merge")
    path = save_model(
        [node], [x], [y], {"shape": np.array([3, 16], np.int64)}, tmp_path / "m.onnx", 13
    )
    with pytest.raises(ConvertSNNError, match=r"at node 'merge' changes the batch dimension"):
        load_onnx(path)


def test_two_data_inputs_and_open_input_size_are_refused(tmp_path):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 4, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])
    path = save_model(
        [helper.make_node("Add", ["a", "b"], ["y"])], [a, b], [y], {}, tmp_path / "two.onnx", 13
    )
    with pytest.raises(ConvertSNNError, match="2 data inputs"):
        load_onnx(path)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    path = save_model(
        [helper.make_node("Relu", ["x"], ["y"])], [x], [y], {}, tmp_path / "open.onnx", 13
    )
    with pytest.raises(ConvertSNNError, match="--input-size"):
        load_onnx(path)
    calib = write_npz(tmp_path / "calib.npz", n=4, shape=(6, 6, 3))
    out = tmp_path / "open.safetensors"
    result = _cli(
        "convert", str(path), "--input-size", "3,6,6", "--calib", str(calib), "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    assert load_snn(out).input_size == (3, 6, 6)


def test_external_small_constants_and_an_unrunnable_file(tmp_path, monkeypatch):
    """onnxruntime cannot read ReduceMean-18's axes from external data when loading from a
    path; the importer hands it the model in memory. Where onnxruntime fails anyway, the import
    goes on with a warning and says so in its source."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    path = save_model(
        [node], [x], [y], {"axes": np.array([2, 3], np.int64)}, tmp_path / "m.onnx", 18
    )
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="m.data", size_threshold=0
    )
    ann = load_onnx(path)
    assert ann.source["onnxruntime_max_abs_diff"] <= 1e-6
    import convertsnn.importers.onnx as onnx_importer

    def fail(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] cannot run")

    monkeypatch.setattr(onnx_importer, "onnxruntime_outputs", fail)
    with pytest.warns(UserWarning, match="not checked, onnxruntime cannot run it"):
        ann = load_onnx(path)
    assert ann.source["onnxruntime_check"].startswith("not run: [ONNXRuntimeError]")
