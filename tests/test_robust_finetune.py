"""Issue 15's finetuning options: quick-suite model selection and the inner attack's gradient
modes (settings, one-line refusals, what they run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convertsnn.errors import ConvertSNNError
from convertsnn.finetune import FinetuneConfig, TrainConfig
from convertsnn.finetune.loop import _better
from convertsnn.objectives import get_objective
from convertsnn.objectives.attack_gradient import InnerGradient, parse_attack_gradient
from convertsnn.objectives.base import eval_logits
from convertsnn.snn.serialize import load_snn
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.finetune_helpers import separable_npz, tiny_snn_file
from tests.test_finetune import quick


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    data = separable_npz(root / "data.npz", n=40)
    return tiny_snn_file(root / "snn.safetensors", data), data


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--select-by", "apgd"], "unknown select_by 'apgd'; choose one of pgd, quick"),
        (["--select-images", "8"], "select_images caps the quick suite's held-out images"),
        (["--select-by", "quick", "--val-fraction", "0"], "val_fraction is 0 (none)"),
        (["--select-by", "quick", "--select-images", "0"], "select_images must be an integer"),
        (["--attack-gradient", "bptt:wobble"], "unknown surrogate 'wobble'"),
        (["--attack-gradient", "sigmoid:20"], "unknown gradient mode 'sigmoid:20'"),
        (["--attack-gradient", "bptr,,ann"], "has an empty mode"),
        (["--attack-gradient", "bptr,bptr"], "names a mode twice"),
        (["--attack-gradient-pick", "best"], "unknown attack_gradient_pick 'best'"),
        (["--objective", "natural", "--attack-gradient", "bptr"], "has no gradient attack"),
        (["--objective", "rssnn-gaussian", "--attack-gradient", "ann"], "has no gradient attack"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(files, tmp_path, flags, message):
    snn, data = files
    result = run_cli("finetune", snn, "--data", data, "--out-dir", tmp_path / "run", *flags)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_settings_come_from_recipes_and_reach_the_objective():
    values = {"model": "m", "data": "d", "attack_gradient": "bptt:sigmoid:20:detach, bptr",
              "attack_gradient_pick": "worst", "select_by": "quick", "select_images": "64"}  # fmt: skip
    config = FinetuneConfig.from_dict(values)
    assert (config.select_by, config.select_images) == ("quick", 64)
    objective = config.build_objective()
    assert objective.settings()["attack_gradient"] == "worst of bptt:sigmoid:20:detach,bptr"
    default = FinetuneConfig(model="m", data="d").build_objective()
    assert default.inner_gradient is None and default.settings()["attack_gradient"] == "native"
    assert [str(m) for m in parse_attack_gradient("ann,adaptive")] == [
        "ann", "adaptive:triangle:0.8",
    ]  # fmt: skip
    TrainConfig(arch="a", data="d", select_by="quick", select_images=32)  # ANNs can use it too


def test_draw_runs_the_attack_in_one_mode_and_restores_the_model(files):
    snn = load_snn(files[0])
    snn.set_gradient("bptt", "triangle:1")
    seen = []

    def attack(model, x, y, clean_logits):
        neuron = next(model.neurons())
        seen.append((neuron.gradient_mode, str(neuron.surrogate)))
        return x

    inner = InnerGradient("bptt:sigmoid:20:detach,bptr")
    x, y = torch.rand(2, 3, 6, 6), torch.tensor([0, 1])
    torch.manual_seed(0)
    for _ in range(20):
        inner.run(attack, snn, x, y, None)
    assert set(seen) == {("bptt", "sigmoid:20:detach"), ("bptr", "triangle:1")}
    neuron = next(snn.neurons())
    assert (neuron.gradient_mode, str(neuron.surrogate)) == ("bptt", "triangle:1")


def test_worst_keeps_per_sample_the_image_with_the_highest_loss(files):
    snn = load_snn(files[0])
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 6, 6), torch.arange(6) % 3
    shifted = {"bptr": (x + 0.3 * torch.rand_like(x)).clamp(0, 1),
               "ann": (x - 0.3 * torch.rand_like(x)).clamp(0, 1)}  # fmt: skip

    def attack(model, x, y, clean_logits):
        return shifted[next(model.neurons()).gradient_mode]

    worst = InnerGradient("bptr,ann", "worst").run(attack, snn, x, y, None)
    losses = {m: F.cross_entropy(eval_logits(snn, v), y, reduction="none")
              for m, v in shifted.items()}  # fmt: skip
    pick_bptr = losses["bptr"] >= losses["ann"]
    assert 0 < int(pick_bptr.sum()) < 6  # both modes win somewhere: the choice is per sample
    want = torch.where(pick_bptr.view(-1, 1, 1, 1), shifted["bptr"], shifted["ann"])
    torch.testing.assert_close(worst, want)


def test_finetuning_with_inner_modes_and_quick_selection_runs_and_records(files, tmp_path):
    result = quick(files, tmp_path / "run", epochs=2, attack_gradient="bptt:rect:0.25:detach,ann",
                   attack_gradient_pick="worst", select_by="quick", select_images=6)  # fmt: skip
    record = load_snn(result.last).metadata["finetune"]
    assert record["objective"]["attack_gradient"] == "worst of bptt:rect:0.25:detach,ann"
    assert record["selected_by"] == "held-out robust accuracy (quick suite, eps 0.05, 6 images)"
    history = result.history
    for epoch in history:
        assert 0 <= epoch["val_quick_acc"] <= 1 and round(epoch["val_quick_acc"] * 6, 6) % 1 == 0
    quick_key = [(h["val_quick_acc"], h["val_clean_acc"], h["epoch"]) for h in history]
    assert result.best_epoch == max(quick_key)[2]


def test_selection_ranks_by_the_chosen_robust_accuracy():
    pgd = FinetuneConfig(model="m", data="d")
    suite = FinetuneConfig(model="m", data="d", select_by="quick")
    first = {"val_robust_acc": 0.9, "val_quick_acc": 0.2, "val_clean_acc": 0.9}
    second = {"val_robust_acc": 0.5, "val_quick_acc": 0.4, "val_clean_acc": 0.9}
    assert not _better(second, first, pgd)  # PGD with the training surrogate prefers the first
    assert _better(second, first, suite)


def test_objective_rejects_gradient_modes_on_a_plain_ann():
    objective = get_objective("pgd-at", eps=0.1, steps=1)
    objective.inner_gradient = InnerGradient("bptr")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ConvertSNNError, match="needs a SpikingNetwork"):
        objective(model, torch.rand(2, 4), torch.tensor([0, 1]))


def test_quick_selection_also_trains_an_ann(tmp_path):
    data = separable_npz(tmp_path / "gray.npz", n=40, size=28, channels=1)
    result = run_cli(
        "train", "--arch", "mnist_cnn", "--arch-kwargs", '{"width": 2}', "--data", data,
        "--epochs", "1", "--batch-size", "16", "--objective", "pgd-at", "--eps", "0.03",
        "--attack-steps", "2", "--val-fraction", "0.2", "--val-attack-steps", "2",
        "--select-by", "quick", "--select-images", "5", "--out-dir", tmp_path / "ann",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "quick suite" in result.output
    refused = run_cli("train", "--arch", "mnist_cnn", "--data", data, "--attack-gradient", "bptr")
    assert_one_line_error(refused, "No such option '--attack-gradient'")  # ANNs have no modes
