"""`convertsnn finetune` / `convertsnn train`: settings, outputs, parameter sets, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.finetune import FinetuneConfig, TrainConfig, finetune, load_recipe
from convertsnn.finetune import api as finetune_api
from convertsnn.finetune.surrogate import surrogate_scale
from convertsnn.importers import load_ann
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn, save_snn
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import write_npz
from tests.finetune_helpers import separable_npz, tiny_snn_file

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data = separable_npz(root / "data.npz", n=40)
    return tiny_snn_file(root / "snn.safetensors", data), data


def quick(files, out_dir, **settings):
    snn, data = files
    base = dict(model=str(snn), data=str(data), epochs=1, batch_size=16, objective="pgd-at",
                eps=0.05, attack_steps=2, val_fraction=0.25, val_attack_steps=2,
                out_dir=str(out_dir), device="cpu", progress=False)  # fmt: skip
    return finetune(**{**base, **settings})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eps", "-0.1"], "eps must be at least 0, got -0.1"),
        (["--objective", "fgsm-at"], "unknown objective 'fgsm-at'; choose one of ard, mart, "),
        (["-T", "0"], "timesteps must be an integer >= 1, got 0"),
        (["--eps", "two"], "eps 'two' is not a number"),
        (["--train", "biases"], "unknown train 'biases'; choose one of all, weights, thresholds"),
        (["--val-fraction", "1"], "val_fraction must be in [0, 1), got 1.0"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--surrogate", "wobble"], "unknown surrogate 'wobble'"),
        (["--objective", "natural", "--regularizer", "mppd"], "natural training has none"),
        (["--memory", "tiny"], "unknown memory 'tiny'; choose one of full, checkpoint"),
        (["--layout", "nhwc"], "unknown layout 'nhwc'; choose one of nchw, channels_last"),
    ],
)
def test_bad_settings_give_one_line_errors(files, tmp_path, flags, message):
    snn, data = files
    result = run_cli("finetune", snn, "--data", data, "--out-dir", tmp_path / "run", *flags)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_bad_recipes_and_missing_inputs(files, tmp_path):
    snn, data = files
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("objective: trades\nlearning_rate: 0.1\n")
    result = run_cli("finetune", snn, "--data", data, "--config", recipe)
    assert result.exit_code == 1 and "unknown setting 'learning_rate' in" in result.output
    recipe.write_text("eps: [1, 2]\n")
    result = run_cli("finetune", snn, "--data", data, "--config", recipe)
    assert result.exit_code == 1 and "setting 'eps' has the wrong type" in result.output
    result = run_cli("finetune", snn)
    assert result.exit_code == 1 and "no training data" in result.output
    result = run_cli("finetune", snn, "--data", f"{data}:test", "--out-dir", tmp_path / "r")
    assert result.exit_code == 1 and "names the test split" in result.output
    five = write_npz(tmp_path / "five.npz", n=16, shape=(6, 6, 3), classes=5)
    result = run_cli("finetune", snn, "--data", five, "--out-dir", tmp_path / "r")
    assert result.exit_code == 1 and "but the model has 3 outputs" in result.output
    result = run_cli("train", "--data", data, "--arch", "no_such_net", "--out-dir", tmp_path / "a")
    assert result.exit_code == 1 and "unknown architecture 'no_such_net'" in result.output


def test_seed001_recipe_holds_the_papers_settings():
    values = load_recipe(RECIPES / "seed001_trades_rfgsm.yaml")
    config = FinetuneConfig.from_dict({**values, "model": "m.safetensors", "data": "cifar10"})
    assert (config.objective, config.eps, config.alpha, config.beta) == (
        "trades-rfgsm", 2 / 255, 1 / 255, 2.0,
    )  # fmt: skip
    assert (config.timesteps, config.surrogate, config.train) == (8, "triangle:1", "all")
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == (
        "sgd", 1e-3, 0.9, 1e-3,
    )  # fmt: skip
    assert (config.schedule, config.epochs, config.batch_size) == ("cosine-epoch", 60, 64)
    for name in ("finetune_pgd_at", "finetune_trades", "finetune_mart"):
        FinetuneConfig.from_dict({**load_recipe(RECIPES / f"{name}.yaml"), "model": "m",
                                  "data": "cifar10"})  # fmt: skip
    TrainConfig.from_dict({**load_recipe(RECIPES / "cifar10_trades_ann.yaml"), "arch": "vgg11_bn",
                           "data": "cifar10"})  # fmt: skip


def test_finetune_writes_snn_files_logs_and_history(files, tmp_path):
    result = run_cli(
        "finetune", files[0], "--data", files[1], "--epochs", "2", "--batch-size", "16",
        "--objective", "trades", "--eps", "8/255", "--attack-steps", "2", "--val-fraction",
        "0.25", "--val-attack-steps", "2", "--log-every", "1", "--out-dir", tmp_path / "run",
        "--device", "cpu", "--no-progress", "-o", tmp_path / "summary.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out images: clean" in result.output
    run = tmp_path / "run"
    for name in ("best.safetensors", "last.safetensors", "checkpoint.pt", "config.json",
                 "log.jsonl", "log.csv"):  # fmt: skip
        assert (run / name).is_file(), name
    snn = load_snn(run / "last.safetensors")
    record = snn.metadata["finetune"]
    assert record["config"]["objective"] == "trades" and record["epochs_done"] == 2
    assert record["objective"]["eps"] == pytest.approx(8 / 255)
    assert "held-out robust accuracy" in record["selected_by"]
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert {"train_loss", "val_clean_acc", "val_robust_acc", "lr"} <= set(record["history"][0])
    assert snn.metadata["conversion"]["calibration"] == "max"  # the converter's facts stay
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines].count("epoch") == 2
    assert [r["global_step"] for r in lines if r["type"] == "step"] == [1, 2, 3, 4]
    assert len((run / "log.csv").read_text().splitlines()) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_epoch"] in (1, 2) and len(summary["history"]) == 2
    again = run_cli("finetune", files[0], "--data", files[1], "--out-dir", run, "--device", "cpu")
    assert again.exit_code == 1 and "already holds a run; pass --resume" in again.output
    changed = run_cli(
        "finetune", files[0], "--data", files[1], "--out-dir", run, "--resume", "--lr", "0.5",
        "--device", "cpu",
    )  # fmt: skip
    assert changed.exit_code == 1 and "cannot resume" in changed.output


def test_finetuned_files_drop_the_bias_calibration_record(files, tmp_path):
    snn_file, data = files
    snn = load_snn(snn_file)
    conv = next(n for n, m in snn.body.named_modules() if isinstance(m, nn.Conv2d))
    width = snn.body.get_submodule(conv).out_channels
    snn.metadata["bias_corrections"] = {conv: [0.0] * width}
    start = tmp_path / "biascal.safetensors"
    save_snn(snn, start)
    result = quick((start, data), tmp_path / "run")
    assert "bias_corrections" not in load_snn(result.best).metadata


@pytest.mark.parametrize("which", ["thresholds", "weights"])
def test_train_option_picks_the_parameters_that_learn(files, tmp_path, which):
    before = load_snn(files[0]).state_dict()
    quick(files, tmp_path / which, train=which, lr=0.05)
    after = load_snn(tmp_path / which / "last.safetensors").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    thresholds = {k for k in before if k.endswith("threshold")}
    assert changed == thresholds if which == "thresholds" else changed and not changed & thresholds


def test_timesteps_and_surrogate_overrides_are_saved(files, tmp_path):
    quick(files, tmp_path / "run", timesteps=3, surrogate="rect:0.5", val_fraction=0)
    snn = load_snn(tmp_path / "run" / "best.safetensors")
    assert snn.timesteps == 3
    assert {str(n.surrogate) for n in snn.neurons()} == {"rect:0.5"}
    assert snn.metadata["finetune"]["selected_by"] == "last epoch (no held-out images)"


def test_checkpointed_memory_trains_the_same_model(files, tmp_path):
    """--memory checkpoint recomputes the layers in backward: the same run, the same weights."""
    quick(files, tmp_path / "full", val_fraction=0, lr=0.05)
    quick(files, tmp_path / "checkpoint", val_fraction=0, lr=0.05, memory="checkpoint")
    full = load_snn(tmp_path / "full" / "last.safetensors").state_dict()
    checkpointed = load_snn(tmp_path / "checkpoint" / "last.safetensors").state_dict()
    before = load_snn(files[0]).state_dict()
    assert any(not torch.equal(before[k], full[k]) for k in full)
    for key, value in full.items():
        assert torch.allclose(checkpointed[key], value, atol=1e-5), key


def test_channels_last_layout_trains_the_same_model(files, tmp_path, monkeypatch):
    """--layout channels_last changes where the numbers sit, not the run: the network trains in
    that layout, to weights within the rounding of convolutions that add in another order; the
    files are saved in torch's layout."""
    layouts = []  # the network's layout whenever the run saves it
    save = finetune_api.save_snn
    monkeypatch.setattr(
        finetune_api, "save_snn", lambda snn, path: (layouts.append(snn.layout), save(snn, path))
    )
    quick(files, tmp_path / "nchw", val_fraction=0, lr=0.05)
    assert layouts and set(layouts) == {"nchw"}
    layouts.clear()
    quick(files, tmp_path / "cl", val_fraction=0, lr=0.05, layout="channels_last")
    assert layouts and set(layouts) == {"channels_last"}
    nchw = load_snn(tmp_path / "nchw" / "last.safetensors")
    last = load_snn(tmp_path / "cl" / "last.safetensors")
    assert last.layout == "nchw"  # a file holds no layout
    for key, value in nchw.state_dict().items():
        assert torch.allclose(last.state_dict()[key], value, atol=1e-4), key


def test_tensorboard_scalars_are_written(files, tmp_path):
    pytest.importorskip("tensorboard")
    quick(files, tmp_path / "run", tensorboard=True, log_every=1)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_train_command_makes_an_ann_that_converts(tmp_path):
    data = separable_npz(tmp_path / "gray.npz", n=40, size=28, channels=1)
    result = run_cli(
        "train", "--arch", "mnist_cnn", "--arch-kwargs", '{"width": 2}', "--data", data,
        "--mean", "0.3", "--std", "0.3", "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
        "--objective", "mart", "--eps", "0.03", "--attack-steps", "2", "--val-fraction", "0.2",
        "--val-attack-steps", "2", "--out-dir", tmp_path / "ann", "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ann = load_ann(str(tmp_path / "ann" / "best.safetensors"))
    assert ann.preprocessing.input_size == (1, 28, 28) and ann.preprocessing.mean == (0.3,)
    assert ann.source["arch"] == "mnist_cnn"
    converted = run_cli(
        "convert", tmp_path / "ann" / "best.safetensors", "--calib", data, "--calib-images", "16",
        "-T", "4", "-o", tmp_path / "snn.safetensors", "--device", "cpu",
    )  # fmt: skip
    assert converted.exit_code == 0, converted.output


def test_config_rejects_values_from_python_too():
    with pytest.raises(ConvertSNNError, match="epochs must be an integer >= 1"):
        FinetuneConfig(model="m", data="d", epochs=0)
    with pytest.raises(ConvertSNNError, match="no architecture"):
        TrainConfig(data="d")


def test_threshold_relative_surrogate_is_a_triangle_as_wide_as_the_threshold():
    def network(surrogate: str) -> SpikingNetwork:
        return SpikingNetwork(nn.Sequential(IFNeuron(threshold=4.0, surrogate=surrogate)), 3)

    torch.manual_seed(0)
    x = torch.rand(5, 7) * 8
    outputs, grads = [], []
    for snn, scale in (
        (network("triangle:1:abs"), "threshold"),
        (network("triangle:4:abs"), "absolute"),
    ):
        x_in = x.clone().requires_grad_(True)
        with surrogate_scale(snn, scale):
            out = snn.forward_sequence(x_in)
            out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append((x_in.grad, next(snn.neurons()).threshold.grad))
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][0].abs().sum() > 0 and grads[0][1] != 0
    assert str(next(network("triangle:1").neurons()).surrogate) == "triangle:1"
    assert str(next(network("triangle:1:abs").neurons()).surrogate) == "triangle:1:abs"
