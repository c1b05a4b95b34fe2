"""Robust distillation from the source ANN (ARD, RSLAD) and the thresholds' learning-rate scale
(issue 15): loss values, gradients, refusals, composition with the finetuning options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convertsnn.errors import ConvertSNNError
from convertsnn.finetune import FinetuneConfig, TrainConfig
from convertsnn.finetune.api import parameter_groups, select_parameters
from convertsnn.objectives import get_objective
from convertsnn.objectives.distill import frozen_source_ann
from convertsnn.snn.serialize import load_snn, save_snn
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.finetune_helpers import separable_npz, tiny_ann, tiny_snn_file
from tests.test_finetune import quick


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdistill")
    data = separable_npz(root / "data.npz", n=40)
    return tiny_snn_file(root / "snn.safetensors", data, timesteps=4), data


def batch(seed: int = 0):
    torch.manual_seed(seed)
    return torch.rand(8, 3, 6, 6), torch.randint(0, 3, (8,))


def kl(p_logits, q_logits):
    p = F.softmax(p_logits, 1)
    return (p * (F.log_softmax(p_logits, 1) - F.log_softmax(q_logits, 1))).sum(1).mean()


def perturbed_student(files):
    """The converted SNN with weights moved away from its source ANN (so KL terms are not 0),
    and the frozen source ANN of the file as converted."""
    snn = load_snn(files[0])
    teacher = frozen_source_ann(snn)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in snn.parameters():
            p.mul_(1 + 0.3 * torch.randn_like(p))
    snn.set_gradient("bptt", "triangle:1")
    return snn, teacher


@pytest.mark.parametrize("name", ["ard", "rslad"])
def test_loss_is_the_papers_formula_and_reaches_weights_and_thresholds(files, name):
    snn, teacher = perturbed_student(files)
    x, y = batch()
    objective = get_objective(name, eps=0.05, steps=2, beta=0.7, **(
        {"temperature": 4.0} if name == "ard" else {}))  # fmt: skip
    objective.setup(snn, teacher)
    snn.train()
    out = objective(snn, x, y)
    with torch.no_grad():
        soft = teacher(x)
        adv, clean = snn(out.x_adv), snn(x)
    if name == "ard":
        expected = 0.7 * 16 * kl(soft / 4, adv / 4) + 0.3 * F.cross_entropy(clean, y)
    else:
        expected = 0.7 * kl(soft, adv) + 0.3 * kl(soft, clean)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert out.loss.item() > 1e-3  # the student differs from its teacher
    assert (out.x_adv - x).abs().max() <= 0.05 + 1e-6 and not torch.equal(out.x_adv, x)
    out.loss.backward()
    thresholds = [n.threshold for n in snn.neurons()]
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in thresholds)
    weights = [p for p in snn.parameters() if all(p is not t for t in thresholds)]
    assert all(w.grad is not None for w in weights) and any(w.grad.abs().sum() > 0 for w in weights)
    assert all(p.grad is None for p in objective.teacher.parameters())  # frozen


def test_rslad_attack_raises_the_kl_to_the_teachers_soft_labels(files):
    snn, teacher = perturbed_student(files)
    x, y = batch(2)
    objective = get_objective("rslad", eps=0.1, steps=5)
    objective.setup(snn, teacher)
    out = objective(snn, x, y)
    with torch.no_grad():
        soft = teacher(x)
        assert kl(soft, snn(out.x_adv)) > kl(soft, snn(x))


def test_student_equal_to_its_teacher_has_zero_loss_at_eps_0(files):
    snn = load_snn(files[0])
    snn.set_gradient("ann")  # the student computes exactly what its source ANN computes
    x, y = batch(3)
    for name in ("ard", "rslad"):
        objective = get_objective(name, eps=0)
        objective.setup(snn)
        assert objective(snn, x, y).loss.item() == pytest.approx(0, abs=1e-6)


def test_teacher_is_the_model_as_loaded_and_stays_frozen(files):
    snn = load_snn(files[0])
    objective = get_objective("ard", eps=0.05)
    x, _ = batch()
    objective(snn, x, torch.zeros(8, dtype=torch.long))  # sets itself up on the first call
    before = objective.teacher_logits(x)
    with torch.no_grad():
        for p in snn.parameters():
            p.add_(0.2)
    assert torch.equal(objective.teacher_logits(x), before)
    assert not objective.teacher.training


def test_defaults_and_settings():
    ard, rslad = get_objective("ard", eps=8 / 255), get_objective("rslad", eps=8 / 255)
    assert (ard.beta, ard.temperature, ard.steps) == (1.0, 30.0, 10)
    assert ard.alpha == pytest.approx(2 / 255) and rslad.alpha == pytest.approx(2 / 255)
    assert (rslad.beta, rslad.temperature) == (pytest.approx(5 / 6), None)
    config = FinetuneConfig.from_dict({"model": "m", "data": "d", "objective": "ard",
                                       "temperature": "10", "attack_gradient": "bptr,ann",
                                       "attack_gradient_pick": "worst"})  # fmt: skip
    settings = config.build_objective().settings()
    assert settings["temperature"] == 10 and settings["attack_gradient"] == "worst of bptr,ann"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective", "ard", "--beta", "2"], "beta must be in [0, 1], got 2"),
        (["--objective", "rslad", "--temperature", "4"], "objective 'rslad' has no temperature"),
        (["--objective", "trades", "--temperature", "4"], "objective 'trades' has no temperature"),
        (["--objective", "ard", "--temperature", "0"], "temperature must be positive, got 0"),
        (["--teacher", "x.safetensors"], "a teacher is only used by the distill and layer-distill"),
        (["--threshold-lr-scale", "0"], "threshold_lr_scale must be positive, got 0.0"),
        (["--threshold-lr-scale", "10", "--train", "weights"], "freezes them"),
    ],
)
def test_bad_combinations_are_refused_in_one_line(files, tmp_path, flags, message):
    snn, data = files
    result = run_cli("finetune", snn, "--data", data, "--out-dir", tmp_path / "run", *flags)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_a_finetuned_file_is_no_source_ann(files, tmp_path):
    snn, data = files
    finetuned = load_snn(snn)
    finetuned.metadata["finetune"] = {"objective": {"objective": "trades-rfgsm"}}
    save_snn(finetuned, tmp_path / "finetuned.safetensors")
    common = ["--data", data, "--objective", "rslad", "--epochs", "1", "--no-progress"]
    result = run_cli("finetune", tmp_path / "finetuned.safetensors", *common,
                     "--out-dir", tmp_path / "a")  # fmt: skip
    assert_one_line_error(result, "the model was finetuned before")
    result = run_cli("finetune", snn, *common, "--teacher", tmp_path / "finetuned.safetensors",
                     "--out-dir", tmp_path / "b")  # fmt: skip
    assert_one_line_error(result, "the teacher file was finetuned before")
    with pytest.raises(ConvertSNNError, match="use it with `convertsnn finetune`"):
        TrainConfig(arch="a", data="d", objective="ard")
    with pytest.raises(ConvertSNNError, match="distils a source ANN into a spiking network"):
        get_objective("rslad", eps=0.1).setup(tiny_ann())


def test_finetune_with_ard_from_a_finetuned_file_and_its_converted_teacher(files, tmp_path):
    first = quick(files, tmp_path / "first", objective="trades-rfgsm", attack_steps=None)
    result = quick(files, tmp_path / "second", model=str(first.best), teacher=str(files[0]),
                   objective="ard", attack_gradient="bptr,bptt:sigmoid:20:detach",
                   select_by="quick", select_images=4)  # fmt: skip
    saved = load_snn(result.best).metadata["finetune"]
    assert saved["objective"]["objective"] == "ard"
    assert saved["objective"]["attack_gradient"] == "draw of bptr,bptt:sigmoid:20:detach"
    assert "val_quick_acc" in result.best_record


def test_threshold_lr_scale_gives_the_thresholds_their_own_learning_rate(files, tmp_path):
    snn = load_snn(files[0])
    groups = parameter_groups(snn, select_parameters(snn, "all"), 10.0)
    thresholds = {id(n.threshold) for n in snn.neurons()}
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == thresholds
    assert not thresholds & {id(p) for p in groups[0]["params"]}
    only = parameter_groups(snn, select_parameters(snn, "thresholds"), 10.0)
    assert [g["lr_scale"] for g in only] == [10.0]

    def moves(scale):
        run = quick(files, tmp_path / f"s{scale}", objective="natural", eps=0, optimizer="sgd",
                    momentum=0, weight_decay=0, lr=0.01, schedule="constant",
                    threshold_lr_scale=scale, val_fraction=0, train_images=16)  # fmt: skip
        start, end = load_snn(files[0]), load_snn(run.last)
        steps = [(a.threshold - b.threshold).abs().sum() for a, b in
                 zip(start.neurons(), end.neurons(), strict=True)]  # fmt: skip
        weights = [(a - b).abs().sum() for (n, a), (_, b) in
                   zip(start.named_parameters(), end.named_parameters(), strict=True)
                   if "threshold" not in n]  # fmt: skip
        return sum(steps).item(), sum(weights).item()

    (t1, w1), (t10, w10) = moves(1.0), moves(10.0)
    assert t1 > 0  # one step of plain SGD: the thresholds move 10x as far...
    assert t10 == pytest.approx(10 * t1, rel=1e-3)  # (float32 differences)
    assert w10 == pytest.approx(w1, rel=1e-4)  # ...and the weights as far as before


def test_run_cli_takes_the_new_flags(files, tmp_path):
    snn, data = files
    result = run_cli("finetune", snn, "--data", data, "--objective", "ard", "--temperature", "8",
                     "--beta", "0.5", "--attack-steps", "1", "--threshold-lr-scale", "10",
                     "--epochs", "1", "--batch-size", "16", "--val-fraction", "0.25",
                     "--val-attack-steps", "1", "--no-progress", "--device", "cpu",
                     "--out-dir", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = load_snn(tmp_path / "run" / "best.safetensors").metadata["finetune"]
    assert saved["config"]["threshold_lr_scale"] == 10
    assert (saved["objective"]["temperature"], saved["objective"]["beta"]) == (8, 0.5)
