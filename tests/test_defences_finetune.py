"""`convertsnn finetune` with the defences: DLIF, RSSNN, SR, noise training + distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convertsnn.finetune import FinetuneConfig
from convertsnn.objectives import distill
from convertsnn.objectives.distill import frozen_source_ann
from convertsnn.snn.dlif import DLIFNeuron
from convertsnn.snn.serialize import load_snn, save_snn
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.finetune_helpers import separable_npz, tiny_snn_file

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("defences")
    data = separable_npz(root / "data.npz", n=40)
    return tiny_snn_file(root / "snn.safetensors", data, timesteps=3), data


COMMON = ("--epochs", "1", "--batch-size", "16", "--val-fraction", "0.25",
          "--val-attack-steps", "2", "--device", "cpu", "--no-progress", "--lr", "0.05")  # fmt: skip


def test_rssnn_with_dlif_projection_and_sparsity_trains_and_saves(files, tmp_path):
    snn_path, data = files
    run = tmp_path / "rssnn"
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", run, *COMMON,
                     "--objective", "rssnn-fgsm", "--eps", "4/255", "--neuron", "dlif",
                     "--weight-projection", "5e-4", "--weight-decay", "0",
                     "--regularizer", "sparsity:0.001", "--log-every", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    model = load_snn(run / "last.safetensors")
    neurons = list(model.neurons())
    assert neurons and all(isinstance(n, DLIFNeuron) for n in neurons)
    assert any(not torch.equal(n.gain.detach(), torch.ones(3)) for n in neurons)
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["type"] == "step"]
    assert {"ce_clean", "ce_adv", "mppd", "sparsity"} <= set(steps[0])
    config = model.metadata["finetune"]["config"]
    assert config["neuron"] == "dlif" and config["weight_projection"] == 5e-4


def test_noise_training_with_distillation_keeps_the_encoder(files, tmp_path):
    snn_path, data = files
    run = tmp_path / "rsc"
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", run, *COMMON,
                     "--objective", "natural", "--encoder", "gaussian:0.05",
                     "--regularizer", "distill:1", "--log-every", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    model = load_snn(run / "best.safetensors")
    assert str(model.encoder) == "gaussian:0.05" and model.encoder.stochastic
    record = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert record["distill"] >= 0 and "ce_clean" in record
    # resuming the finished run with the same settings is a no-op, also for the distill teacher
    again = run_cli("finetune", snn_path, "--data", data, "--out-dir", run, *COMMON,
                    "--objective", "natural", "--encoder", "gaussian:0.05",
                    "--regularizer", "distill:1", "--log-every", "1", "--resume")  # fmt: skip
    assert again.exit_code == 0, again.output


def test_low_latency_distillation_recipe_runs_and_fits_the_source_ann(files, tmp_path):
    snn_path, data = files
    run = tmp_path / "distill"
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", run,
                     "--config", RECIPES / "distill_low_latency.yaml", "--epochs", "4",
                     "--batch-size", "8", "--val-fraction", "0.25", "--lr", "0.01",
                     "--device", "cpu", "--no-progress", "--log-every", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out clean" not in result.output  # --no-progress: no bars, held-out ones too
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # eps 0: the held-out "robust" accuracy that picks the best epoch is the clean accuracy
    assert all(r["val_robust_acc"] == r["val_clean_acc"] for r in epochs)
    config = load_snn(run / "best.safetensors").metadata["finetune"]["config"]
    assert (config["objective"], config["regularizers"], config["eps"]) == (
        "natural",
        ["distill"],
        0,
    )


def test_a_second_distillation_run_learns_from_the_teacher_file(files, tmp_path, monkeypatch):
    snn_path, data = files
    first = tmp_path / "t3"
    flags = ("--objective", "natural", "--regularizer", "distill", "--eps", "0", *COMMON)
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", first, *flags)
    assert result.exit_code == 0, result.output
    teachers = []  # the networks the distill term takes its frozen source ANN from

    def spy(snn):
        teachers.append({k: v.clone() for k, v in snn.state_dict().items()})
        return frozen_source_ann(snn)

    monkeypatch.setattr(distill, "frozen_source_ann", spy)
    second = tmp_path / "t2"
    result = run_cli("finetune", first / "last.safetensors", "--data", data, "--out-dir", second,
                     "-T", "2", "--teacher", snn_path, *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    source, student = (load_snn(p).state_dict() for p in (snn_path, first / "last.safetensors"))
    assert len(teachers) == 1 and teachers[0].keys() == source.keys()
    assert all(torch.equal(teachers[0][k], source[k]) for k in source)
    assert not all(torch.equal(teachers[0][k], student[k]) for k in student)
    second_model = load_snn(second / "last.safetensors")
    assert second_model.timesteps == 2
    assert second_model.metadata["finetune"]["config"]["teacher"] == str(snn_path)


def test_teacher_refusals(files, tmp_path):
    snn_path, data = files
    other = load_snn(snn_path)
    other.metadata["num_classes"] = 4
    save_snn(other, tmp_path / "other.safetensors")
    base = ("finetune", snn_path, "--data", data, "--out-dir", tmp_path / "run", *COMMON)
    result = run_cli(*base, "--teacher", snn_path)
    assert_one_line_error(result, "a teacher is only used by the distill and layer-distill")
    result = run_cli(*base, "--objective", "natural", "--regularizer", "distill",
                     "--teacher", tmp_path / "other.safetensors")  # fmt: skip
    assert_one_line_error(result, "with 4 classes but the model takes (3, 6, 6) with 3")


def test_objectives_compose_with_a_regularizer_and_an_encoder(files, tmp_path):
    snn_path, data = files
    run = tmp_path / "composed"
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", run, *COMMON,
                     "--objective", "trades", "--attack-steps", "2", "--eps", "0.05",
                     "--regularizer", "sparsity", "--regularizer", "mppd:0.5",
                     "--encoder", "gaussian:0.1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(load_snn(run / "last.safetensors").encoder) == "gaussian:0.1"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--encoder", "laplace:0.1"], "unknown encoder 'laplace:0.1'"),
        (["--encoder", "gaussian:-1"], "gaussian encoder needs sigma > 0"),
        (["--neuron", "lif"], "unknown neuron 'lif'; choose one of keep, dlif"),
        (["--weight-projection", "-1"], "weight_projection must be in [0, 1)"),
        (["--regularizer", "sparsity:x"], "regularizer weight in 'sparsity:x' is not a number"),
        (
            ["--regularizer", "sr"],
            "unknown regularizer 'sr' (distill, layer-distill, mppd, sparsity)",
        ),
        (["--objective", "rssnn-fgsm", "--attack-steps", "3"], "one perturbation of size eps"),
    ],
)
def test_bad_defence_settings_give_one_line_errors(files, tmp_path, flags, message):
    snn_path, data = files
    result = run_cli("finetune", snn_path, "--data", data, "--out-dir", tmp_path / "r", *flags)
    assert_one_line_error(result, message)


def test_a_setting_added_later_at_its_default_does_not_block_resuming(files, tmp_path):
    snn_path, data = files
    config = FinetuneConfig(model=str(snn_path), data=str(data))
    saved = config.to_dict()
    del saved["weight_projection"], saved["neuron"]
    assert config.differences(saved) == []
    changed = FinetuneConfig(model=str(snn_path), data=str(data), neuron="dlif")
    assert changed.differences(saved) == ["neuron: None -> 'dlif'"]
