"""The malformed-input campaign: every command and the public Python API, given bad input,
stop with one line that names what was wrong; no traceback, no "internal error", nothing left
behind. Plus property tests of the npz, ONNX and YAML readers (hypothesis).

Totals are reported in benchmarks/results/bad_inputs.md.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from convertsnn import convert, load_snn, save_snn
from convertsnn.cli import main
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.finetune.config import load_recipe
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.models import create_model
from convertsnn.snn.network import SpikingNetwork
from tests.onnx_files import rand_weights, save_model

ASSETS = Path(__file__).resolve().parents[1] / "convertsnn" / "assets"
ANN = ASSETS / "mnist_cnn_pgd.safetensors"  # 1x28x28 MNIST CNN, 10 classes
SAMPLE = ASSETS / "mnist_sample.npz"


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _mnist(n: int = 8, shape=(28, 28), labels=None, dtype=np.uint8) -> dict:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *shape)).astype(dtype)
    y = np.asarray(labels if labels is not None else rng.integers(0, 10, n), dtype=np.int64)
    return {"x_train": x, "y_train": y, "x_test": x, "y_test": y}


def _onnx(path: Path, dims: list) -> Path:
    """A 1-conv ONNX net with the given input dims (the weights fit one channel)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    return save_model(nodes, [x], [y], {"w": rand_weights(2, 1, 3, 3)}, path, opset=13)


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PAYLOAD_RAN', 'w').write('x')",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Inputs, good and bad, by name (paths as strings for the command lines)."""
    d = tmp_path_factory.mktemp("inputs")
    loader = DataLoader(load_dataset(str(SAMPLE), split="train", limit=64), batch_size=64)
    ann = load_ann(str(ANN))
    snn = convert(ann.model, loader, timesteps=4, metadata=ann.metadata())
    save_snn(snn, d / "snn.safetensors")
    (d / "text.txt").write_text("hello\n")
    (d / "folder").mkdir()
    (d / "garbage.npz").write_text("not a zip")
    (d / "empty_file.npz").write_bytes(b"")
    _npz(d / "ok.npz", **_mnist())
    data = (d / "ok.npz").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    _npz(d / "empty.npz", **_mnist(0))
    _npz(d / "negative.npz", **_mnist(labels=[-1, 0, 1, 2, 3, 4, 5, 6]))
    _npz(d / "big_labels.npz", **_mnist(labels=[15, 0, 1, 2, 3, 4, 5, 6]))
    _npz(d / "float_images.npz", **_mnist(dtype=np.float32))
    arrays = _mnist()
    _npz(
        d / "float_labels.npz",
        **{**arrays, "y_train": arrays["y_train"] + 0.5, "y_test": arrays["y_test"] + 0.5},
    )
    _npz(
        d / "labels_2d.npz",
        **{**arrays, "y_train": arrays["y_train"][:, None], "y_test": arrays["y_test"][:, None]},
    )
    objects = np.empty(8, dtype=object)
    objects[:] = [np.zeros((28, 28), np.uint8)] * 8
    np.savez(
        d / "objects.npz",
        x_train=objects,
        y_train=arrays["y_train"],
        x_test=objects,
        y_test=arrays["y_test"],
    )
    _npz(d / "no_test.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    _npz(d / "no_labels.npz", x_train=arrays["x_train"], x_test=arrays["x_test"])
    _npz(
        d / "count.npz",
        **{**arrays, "y_train": arrays["y_train"][:5], "y_test": arrays["y_test"][:5]},
    )
    _npz(
        d / "rank5.npz",
        **{
            **arrays,
            "x_train": arrays["x_train"][:, None, None],
            "x_test": arrays["x_test"][:, None, None],
        },
    )
    _npz(d / "rgb32.npz", **_mnist(shape=(32, 32, 3)))
    _npz(d / "tiny.npz", **_mnist(shape=(2, 2)))
    jpeg = {
        "train_jpeg": np.frombuffer(b"\xff\xd8junk" * 10, np.uint8),
        "train_offsets": np.array([0, 20, 10]),
        "y_train": np.zeros(2, np.int64),
    }
    _npz(d / "bad_jpeg.npz", **jpeg, **{k.replace("train", "test"): v for k, v in jpeg.items()})
    _onnx(d / "huge.onnx", [1, 1, 100000, 100000])
    _onnx(d / "zero.onnx", [1, 1, 0, 28])
    (d / "garbage.onnx").write_text("not onnx")
    (d / "empty.onnx").write_bytes(b"")
    (d / "garbage.pt").write_text("not a checkpoint")
    torch.save({"state_dict": _Payload()}, d / "payload.pt")
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, d / "plain.pt")
    torch.save(create_model("resnet20", num_classes=10).state_dict(), d / "r20.pt")
    save_file({"x": torch.zeros(1)}, d / "plain.safetensors")
    (d / "bad.yaml").write_text("epochs: [1, 2\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("epochz: 3\n")
    (d / "negative_epochs.yaml").write_text("epochs: -1\n")
    (d / "word_epochs.yaml").write_text("epochs: many\n")
    (d / "lr_word.yaml").write_text("lr: fast\n")
    names = {p.name.replace(".", "_"): str(p) for p in d.iterdir()}
    return {**names, "dir": str(d)}


# (command line with {file} placeholders, text the one-line error must contain)
CLI_CASES = [
    # top level and usage errors
    ("nosuchcommand", "No such command"),
    ("convert", "Missing argument 'SOURCE'"),
    ("convert {ANN} --neuron qif", "Invalid value for '--neuron'"),
    ("convert {ANN} -T x", "Invalid value for '--timesteps'"),
    ("evaluate {snn_safetensors}", "Missing option '--data'"),
    ("evaluate {snn_safetensors} --data {ok_npz} --suite huge", "Invalid value for '--suite'"),
    ("evaluate {snn_safetensors} --data {ok_npz} --report {text_txt}", "'--report'"),
    ("evaluate {snn_safetensors} --data {ok_npz} --resume {text_txt}", "'--resume'"),
    ("convert {ANN} -o {folder}", "is a directory"),
    # convert: sources
    ("convert nope.pt --arch resnet20", "not found"),
    ("convert {text_txt}", "cannot tell what kind of model"),
    ("convert timm:", "names no model after 'timm:'"),
    ("convert robustbench:cifar10/Linf", "should be DATASET/THREAT/NAME"),
    ("convert robustbench:mnist/Linf/X", "unknown RobustBench dataset"),
    ("convert {garbage_onnx}", "garbage.onnx"),
    ("convert {empty_onnx}", "empty.onnx"),
    ("convert {huge_onnx}", "values per image"),
    ("convert {zero_onnx}", "not fixed in the file"),
    ("convert {garbage_pt} --arch resnet20", "garbage.pt"),
    ("convert {payload_pt} --arch resnet20", "weights_only"),
    ("convert {plain_pt}", "--arch"),
    ("convert {plain_pt} --arch nosuchnet", "nosuchnet"),
    ("convert {plain_safetensors}", "--arch"),
    ("convert zoo:nosuchmodel", "nosuchmodel"),
    ("convert {ANN} --weights {ANN}", "--weights applies to timm sources"),
    ("convert {ANN} --model-dir {dir}", "--model-dir applies to robustbench sources"),
    # convert: numbers
    ("convert {ANN} -T 0", "--timesteps must be an integer from 1 to 4096"),
    ("convert {ANN} -T -3", "--timesteps must be an integer from 1 to 4096"),
    ("convert {ANN} -T 1000000000", "--timesteps must be an integer from 1 to 4096"),
    ("convert {ANN} --v-init -1", "--v-init is a fraction of the threshold"),
    ("convert {ANN} --v-init 2", "--v-init is a fraction of the threshold"),
    ("convert {ANN} --calib {ok_npz} --calib-images 0", "--calib-images must be at least 1"),
    ("convert {ANN} --batch-size 0", "--batch-size must be at least 1"),
    ("convert {ANN} --neuron lif --leak 1.5", "leak in (0, 1)"),
    ("convert {ANN} --calibration median", "unknown calibration"),
    ("convert {ANN} --surrogate boxcar", "unknown surrogate"),
    ("convert {ANN} --device tpu", "unknown device"),
    # convert: preprocessing
    ("convert {ANN} --mean 0.1", "give --mean and --std together"),
    ("convert {ANN} --std 0.3", "give --mean and --std together"),
    ("convert {ANN} --mean 0.5 --std 0", "std must be positive"),
    ("convert {ANN} --mean 0.5 --std -1", "std must be positive"),
    ("convert {ANN} --mean 0.1,0.2 --std 0.3", "mean has 2 values but std has 1"),
    ("convert {ANN} --mean 0.1,0.2,0.3 --std 0.2,0.2,0.2", "the model takes 1 channels"),
    ("convert {r20_pt} --arch resnet20 --mean 0,0,0,0 --std 1,1,1,1", "takes 3 channels"),
    ("convert {r20_pt} --arch resnet20 --mean 0,0 --std 1,1", "takes 3 channels"),
    ("convert {ANN} --mean x --std 1", "--mean 'x' is not a number"),
    ("convert {ANN} --mean nan --std 1", "is not a number"),
    ("convert {ANN} --mean 0 --std inf", "is not a number"),
    ("convert {ANN} --mean , --std 1", "--mean is empty"),
    ("convert {ANN} --input-size 0,28,28", "positive integers"),
    ("convert {ANN} --input-size ,", "--input-size is empty"),
    # convert: calibration data
    ("convert {ANN} --calib {empty_npz}", "has no images in its 'train' split"),
    ("convert {ANN} --calib {objects_npz}", "holds Python objects"),
    ("convert {ANN} --calib {tiny_npz}", "calibration images are (1, 2, 2)"),
    ("convert {ANN} --calib {rgb32_npz}", "calibration images are (3, 32, 32)"),
    ("convert {ANN} --calib {garbage_npz}", "is not a readable .npz file"),
    ("convert {ANN} --calib {empty_file_npz}", "is not a readable .npz file"),
    ("convert {ANN} --calib {truncated_npz}", "truncated.npz"),
    ("convert {ANN} --calib nope.npz", "dataset file not found"),
    ("convert {ANN} --calib imagenet", "neither a file nor a known name"),
    ("convert {ANN} --calib {float_images_npz}", "images must be uint8"),
    ("convert {ANN} --calib {float_labels_npz}", "must be a 1-D integer array"),
    ("convert {ANN} --calib {labels_2d_npz}", "must be a 1-D integer array"),
    ("convert {ANN} --calib {no_test_npz}:test", "has no 'test' split"),
    ("convert {ANN} --calib {no_labels_npz}", "has images but no labels"),
    ("convert {ANN} --calib {count_npz}", "8 images but 5 labels"),
    ("convert {ANN} --calib {rank5_npz}", "must be [N, H, W] or [N, H, W, C]"),
    ("convert {ANN} --calib {negative_npz}", "negative labels"),
    ("convert {ANN} --calib {bad_jpeg_npz}", "JPEG offsets must increase"),
    # convert: outputs
    ("convert {ANN} -o {text_txt}/x.safetensors", "cannot write"),
    ("convert {ANN} -o /proc/convertsnn_x.safetensors", "cannot write"),
    # evaluate: model
    ("evaluate nope.safetensors --data {ok_npz}", "model file not found"),
    ("evaluate {text_txt} --data {ok_npz}", "is not a readable safetensors file"),
    ("evaluate {plain_safetensors} --data {ok_npz}", "without convertsnn metadata"),
    ("evaluate zoo:nosuchmodel --data {ok_npz}", "nosuchmodel"),
    # evaluate: data
    ("evaluate {snn_safetensors} --data {empty_npz}", "has no images in its 'test' split"),
    ("evaluate {snn_safetensors} --data {big_labels_npz}", "labels up to 15 but the model has 10"),
    ("evaluate {snn_safetensors} --data {negative_npz}", "negative labels"),
    ("evaluate {snn_safetensors} --data {rgb32_npz}", "but the model expects (1, 28, 28)"),
    ("evaluate {snn_safetensors} --data {objects_npz}", "holds Python objects"),
    ("evaluate {snn_safetensors} --data {float_images_npz}", "images must be uint8"),
    ("evaluate {snn_safetensors} --data {bad_jpeg_npz}", "JPEG offsets must increase"),
    ("evaluate {snn_safetensors} --data {no_test_npz}", "has no 'test' split"),
    ("evaluate {snn_safetensors} --data {ok_npz}:valid", "neither a file nor a known name"),
    # evaluate: options
    ("evaluate {snn_safetensors} --data {ok_npz} --attack pgd --eps ,", "--eps is empty"),
    ("evaluate {snn_safetensors} --data {ok_npz} --attack pgd --eps -1", "--eps must be >= 0"),
    ("evaluate {snn_safetensors} --data {ok_npz} --attack pgd --eps eight", "is not a number"),
    ("evaluate {snn_safetensors} --data {ok_npz} --attack pgd --eps 1/0", "is not a number"),
    ("evaluate {snn_safetensors} --data {ok_npz} -T 0", "positive integers"),
    ("evaluate {snn_safetensors} --data {ok_npz} -T 5000", "from 1 to 4096"),
    ("evaluate {snn_safetensors} --data {ok_npz} -T ,", "--timesteps is empty"),
    ("evaluate {snn_safetensors} --data {ok_npz} --attack foo", "unknown attack 'foo'"),
    ("evaluate {snn_safetensors} --data {ok_npz} --batch-size 0", "must be at least 1"),
    ("evaluate {snn_safetensors} --data {ok_npz} --eot 0", "must be at least 1"),
    ("evaluate {snn_safetensors} --data {ok_npz} --limit 0", "--limit must be at least 1"),
    ("evaluate {snn_safetensors} --data {ok_npz} --suite quick --attack pgd", "not both"),
    ("evaluate {snn_safetensors} --data {ok_npz} --resume {dir}/state", "need --suite or"),
    ("evaluate {snn_safetensors} --data {ok_npz} --suite quick --gradient bptr", "--gradient"),
    ("evaluate {snn_safetensors} --data {ok_npz} --device tpu", "unknown device"),
    ("evaluate {snn_safetensors} --data {ok_npz} --limit 2 -o {text_txt}/r.json", "cannot write"),
    # finetune
    ("finetune nope.safetensors --data {ok_npz}", "model file not found"),
    ("finetune zoo:nosuchmodel --data {ok_npz}", "nosuchmodel"),
    ("finetune {snn_safetensors} --data {ok_npz} --config nope.yaml", "recipe file not found"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {bad_yaml}", "is not valid YAML"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {list_yaml}", "must hold a mapping"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {unknown_yaml}", "epochz"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {negative_epochs_yaml}", "epochs"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {word_epochs_yaml}", "epochs"),
    ("finetune {snn_safetensors} --data {ok_npz} --config {lr_word_yaml}", "lr"),
    ("finetune {snn_safetensors} --data {big_labels_npz}", "labels up to 15 but the model has 10"),
    ("finetune {snn_safetensors} --data {negative_npz}", "negative labels"),
    ("finetune {snn_safetensors} --data {empty_npz}", "has no images"),
    ("finetune {snn_safetensors} --data {rgb32_npz}", "but the model expects (1, 28, 28)"),
    ("finetune {snn_safetensors} --data {ok_npz}:test", "names the test split"),
    ("finetune {snn_safetensors} --data {ok_npz} --epochs 0", "epochs"),
    ("finetune {snn_safetensors} --data {ok_npz} --objective foo", "unknown objective"),
    ("finetune {snn_safetensors} --data {ok_npz} --eps x", "is not a number"),
    ("finetune {snn_safetensors} --data {ok_npz} -T 0", "timesteps"),
    ("finetune {snn_safetensors} --data {ok_npz} -T 100000", "from 1 to 4096"),
    ("finetune {snn_safetensors} --data {ok_npz} --val-fraction 1.5", "val_fraction"),
    ("finetune {snn_safetensors} --data {ok_npz} --regularizer foo", "foo"),
    ("finetune {snn_safetensors} --data {ok_npz} --out-dir {text_txt}", "text.txt"),
    # train
    ("train --arch nosuchnet --data {ok_npz}", "nosuchnet"),
    ("train --arch mnist_cnn --data {ok_npz} --arch-kwargs {{x", "JSON"),
    ("train --arch mnist_cnn --data nope.npz", "dataset file not found"),
    # certify
    ("certify nope.safetensors --data {ok_npz}", "model file not found"),
    ("certify {snn_safetensors} --data {ok_npz} --sigma 0.1 --skip 0", "must be at least 1"),
    ("certify {snn_safetensors} --data {ok_npz} --sigma 0.1 --n0 0", "n0"),
    ("certify {snn_safetensors} --data {ok_npz} --sigma 0.1 --alpha 2", "alpha"),
    ("certify {snn_safetensors} --data {big_labels_npz} --sigma 0.1", "labels up to 15"),
    ("certify {snn_safetensors} --data {empty_npz} --sigma 0.1", "has no images"),
    # export, import, profile
    ("export {snn_safetensors} --format onnx", "Missing option '--out'"),
    ("export nope.safetensors --format onnx -o x.onnx", "model file not found"),
    ("export {snn_safetensors} --format onnx -o {text_txt}/x.onnx", "cannot write"),
    ("export {snn_safetensors} --format onnx -o x.onnx -T 0", "from 1 to 4096"),
    ("export {snn_safetensors} --format onnx -o x.onnx -T 100000", "from 1 to 4096"),
    ("export {snn_safetensors} --format onnx -o x.onnx --check {empty_npz}", "has no images"),
    ("export {snn_safetensors} --format onnx -o x.onnx --check-images 0", "at least 1"),
    ("export {snn_safetensors} --format nir -o x.nir --check {rgb32_npz}", "expects (1, 28, 28)"),
    ("import nope.nir -o x.safetensors", "nope.nir"),
    ("import {text_txt} -o x.safetensors", "text.txt"),
    ("import {garbage_npz} -o x.safetensors", "garbage.npz"),
    ("profile {snn_safetensors} --data {empty_npz}", "has no images"),
    ("profile {snn_safetensors} --data {rgb32_npz}", "but the model expects (1, 28, 28)"),
    ("profile {snn_safetensors} --data {ok_npz} --limit 0", "must be at least 1, got 0"),
    ("profile {snn_safetensors} --data {ok_npz} -T 0", "from 1 to 4096"),
    ("profile {snn_safetensors} --data {ok_npz} --e-mac x", "is not a number"),
    ("profile {snn_safetensors} --data {ok_npz} --e-mac -1", "--e-mac"),
    ("profile {snn_safetensors} --data {ok_npz} --batch-size 0", "--batch-size"),
    ("profile {snn_safetensors} --data {ok_npz} -o {text_txt}/p.json", "cannot write"),
    # demo, zoo
    ("demo --images 0", "--images must be between 1 and 1000"),
    ("demo --images 5000", "--images must be between 1 and 1000"),
    ("demo -T 0", "positive integers"),
    ("demo --eps x", "--eps 'x' is not a number"),
    ("zoo pull nosuchmodel", "nosuchmodel"),
    ("zoo info nosuchmodel", "nosuchmodel"),
]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("line", "message"), CLI_CASES, ids=[c[0][:60] for c in CLI_CASES])
def test_command_line(files, tmp_path, monkeypatch, line, message):
    inputs = Path(files["dir"])
    before = _tree(inputs)
    monkeypatch.chdir(tmp_path)
    args = [a.format(ANN=ANN, **files) for a in line.split()]
    result = CliRunner().invoke(main, args)
    output = result.output
    assert result.exit_code == 1, output
    assert output.startswith("Error: ") and output.count("\n") == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert message in output, output
    assert not _tree(tmp_path), "partial output left behind"
    assert _tree(inputs) == before, "files appeared next to the inputs"
    assert not Path("PAYLOAD_RAN").exists()


def _snn(files) -> SpikingNetwork:
    return load_snn(files["snn_safetensors"])


def _r20_snn(files) -> SpikingNetwork:
    """A converted ResNet-20 whose input size is unknown (a checkpoint, no calibration data)."""
    ann = load_ann(files["r20_pt"], arch="resnet20")
    return convert(ann.model, calibration="bnstats", metadata=ann.metadata())


def _loader(images: torch.Tensor) -> DataLoader:
    return DataLoader(
        list(zip(images, torch.zeros(len(images), dtype=torch.long), strict=True)), batch_size=4
    )


def _ann() -> nn.Module:
    return load_ann(str(ANN)).model


API_CASES = [
    ("convert(model, [1, 2, 3])", lambda f: convert(_ann(), [1, 2, 3]), "(images, labels) batches"),
    ("convert(None, None)", lambda f: convert(None, None), "convert takes a torch.nn.Module"),
    (
        "convert(model, iterator)",
        lambda f: convert(_ann(), iter(_loader(torch.rand(4, 1, 28, 28)))),
        "re-iterable",
    ),
    (
        "convert NaN images",
        lambda f: convert(_ann(), _loader(torch.full((4, 1, 28, 28), torch.nan))),
        "NaN",
    ),
    (
        "convert images in [0, 255]",
        lambda f: convert(_ann(), _loader(torch.rand(4, 1, 28, 28) * 255)),
        "the ANN takes images in [0, 1]",
    ),
    (
        "convert uint8 images",
        lambda f: convert(_ann(), _loader(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))),
        "must be float",
    ),
    (
        "convert unbatched images",
        lambda f: convert(_ann(), [(torch.rand(1, 28, 28), 0)]),
        "[B, C, H, W]",
    ),
    ("convert empty calibration", lambda f: convert(_ann(), []), "calibration data is empty"),
    (
        "convert timesteps=0",
        lambda f: convert(_ann(), timesteps=0, calibration="bnstats"),
        "timesteps must be an integer",
    ),
    (
        "convert timesteps=2.5",
        lambda f: convert(_ann(), timesteps=2.5, calibration="bnstats"),
        "timesteps must be an integer",
    ),
    ("convert v_init=2", lambda f: convert(_ann(), v_init=2, calibration="bnstats"), "v_init"),
    (
        "convert neuron='qif'",
        lambda f: convert(_ann(), neuron="qif", calibration="bnstats"),
        "unknown neuron",
    ),
    (
        "convert without data",
        lambda f: convert(_ann(), None, calibration="percentile:99"),
        "needs calibration images",
    ),
    (
        "save_snn(nn.Sequential())",
        lambda f: save_snn(nn.Sequential(), "x.safetensors"),
        "save_snn takes a SpikingNetwork",
    ),
    (
        "save_snn to /proc",
        lambda f: save_snn(_snn(f), "/proc/convertsnn_x.safetensors"),
        "cannot write",
    ),
    ("load_ann(123)", lambda f: load_ann(123), "a model source is a path or a string"),
    ("load_ann missing", lambda f: load_ann("nope.onnx"), "nope.onnx"),
    ("load_snn(123)", lambda f: load_snn(123), "a model file is a path or a string"),
    ("load_snn missing", lambda f: load_snn("nope.safetensors"), "model file not found"),
    ("snn(unbatched)", lambda f: _snn(f)(torch.rand(1, 28, 28)), "add the batch dimension"),
    (
        "snn of unknown size (unbatched)",
        lambda f: _r20_snn(f)(torch.rand(3, 32, 32)),
        "add the batch dimension",
    ),
    ("snn(wrong size)", lambda f: _snn(f)(torch.rand(2, 1, 32, 32)), "does not match"),
    (
        "snn(images in [0, 255])",
        lambda f: _snn(f)(torch.rand(2, 1, 28, 28) * 255),
        "divide uint8 images by 255",
    ),
    ("snn(NaN)", lambda f: _snn(f)(torch.full((2, 1, 28, 28), torch.nan)), "NaN"),
    ("snn(list)", lambda f: _snn(f)([0.5]), "takes a tensor"),
    ("snn.timesteps = 0", lambda f: setattr(_snn(f), "timesteps", 0), "timesteps"),
    ("snn.set_gradient('x')", lambda f: _snn(f).set_gradient("x"), "unknown gradient mode"),
    ("Preprocessing(std=0)", lambda f: Preprocessing(mean=(0.5,), std=(0.0,)), "std must be"),
    (
        "Preprocessing(2 means, 1 std)",
        lambda f: Preprocessing(mean=(0.5, 0.5), std=(1.0,)),
        "mean has 2 values",
    ),
    ("Preprocessing(mean=nan)", lambda f: Preprocessing(mean=(float("nan"),)), "finite"),
    (
        "Preprocessing(channels)",
        lambda f: Preprocessing(mean=(0.5,) * 3, input_size=(1, 8, 8)),
        "the model takes 1 channels",
    ),
    ("load_dataset missing", lambda f: load_dataset("nope.npz"), "dataset file not found"),
    ("load_dataset objects", lambda f: load_dataset(f["objects_npz"]), "holds Python objects"),
    ("load_dataset empty", lambda f: load_dataset(f["empty_npz"]), "has no images"),
    ("load_dataset limit=0", lambda f: load_dataset(f["ok_npz"], limit=0), "--limit"),
    ("load_dataset split", lambda f: load_dataset(f["ok_npz"], split="val"), "unknown split"),
    ("load_recipe list", lambda f: load_recipe(f["list_yaml"]), "must hold a mapping"),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_python_api(files, tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConvertSNNError) as err:
        call(files)
    text = str(err.value)
    assert "\n" not in text and message in text, text
    assert not _tree(tmp_path)


def test_images_slightly_outside_the_range_warn_once(files):
    """Normalised or noisy images run with one warning (randomised smoothing adds noise)."""
    snn = _snn(files)
    x = torch.rand(2, 1, 28, 28) * 2 - 0.5
    with pytest.warns(UserWarning, match="the SNN takes images in \\[0, 1\\]"):
        snn(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snn(x)  # once per model


def test_campaign_size():
    assert len(CLI_CASES) + len(API_CASES) >= 100


# ---- property tests of the readers: any bytes or arrays give data or a one-line error -----

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _one_line_or_data(read) -> None:
    try:
        read()
    except ConvertSNNError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize(("suffix", "read"), [(".npz", load_dataset), (".onnx", load_ann)])
@PROPERTY
@given(data=st.binary(max_size=400))
def test_readers_on_random_bytes(tmp_path, suffix, read, data):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    _one_line_or_data(lambda: read(str(path)))


_DTYPES = st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.int8, np.uint16])
_SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple)


@PROPERTY
@given(_DTYPES, _SHAPES, _DTYPES, _SHAPES)
def test_npz_reader_on_random_arrays(tmp_path, x_dtype, x_shape, y_dtype, y_shape):
    path = tmp_path / "arrays.npz"
    np.savez(path, x_test=np.ones(x_shape, x_dtype), y_test=np.ones(y_shape, y_dtype))
    try:
        data = load_dataset(str(path))
    except ConvertSNNError as err:
        assert "\n" not in str(err)
        return
    assert data.images.dtype == torch.uint8 and data.images.ndim == 4
    assert len(data) == len(data.labels) > 0 and int(data.labels.min()) >= 0


@PROPERTY
@given(st.lists(st.one_of(st.none(), st.integers(-2, 70000), st.text(max_size=3)), max_size=5))
def test_onnx_reader_on_random_input_shapes(tmp_path, dims):
    try:
        path = _onnx(tmp_path / "random.onnx", dims)
    except (ValueError, TypeError):  # onnx.helper refuses the shape itself
        return
    _one_line_or_data(lambda: load_ann(str(path)))


_YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@PROPERTY
@given(st.one_of(st.text(max_size=200), _YAML_VALUES.map(yaml.safe_dump)))
def test_yaml_recipe_reader(tmp_path, text):
    from convertsnn.finetune import FinetuneConfig

    path = tmp_path / "recipe.yaml"
    path.write_text(text)

    def read():
        values = load_recipe(path)
        FinetuneConfig.from_dict({"model": "m.safetensors", "data": "d.npz", **values}, str(path))

    _one_line_or_data(read)


def test_pickle_in_npz_is_never_loaded(tmp_path, monkeypatch):
    """An npz whose array is a pickle payload is refused without unpickling it."""
    path = tmp_path / "payload.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x_test.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(
                handle, {"descr": "|O", "fortran_order": False, "shape": (1,)}
            )
            handle.write(pickle.dumps(_Payload()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConvertSNNError, match="holds Python objects"):
        load_dataset(str(path))
    assert not (tmp_path / "PAYLOAD_RAN").exists()
