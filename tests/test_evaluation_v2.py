"""Evaluation v2: suites that do not depend on how the model is written, and masking flags that
stay on (planted masking: a zero surrogate, rescaled layers, a non-differentiable input)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.rescale import rescaled
from convertsnn.eval.sanity import run_checks
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import S001, Stage, Suite, run_suite
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn

ZOO = Path(__file__).resolve().parents[1] / "model_zoo" / "mnist_cnn_pgd_snn_t8.safetensors"
SAMPLE = Path(__file__).resolve().parents[1] / "convertsnn" / "assets" / "mnist_sample.npz"
EPS = 0.15  # the demo model at T=4 keeps about half of these images at this radius
AT_EPS = EvalSettings(EPS, progress=False)
QUIET = EvalSettings(8 / 255, progress=False)


@pytest.fixture
def mnist():
    data = np.load(SAMPLE)
    x = torch.tensor(data["x_test"][:24]).float().div(255).unsqueeze(1)
    return x, torch.tensor(data["y_test"][:24]).long()


def demo_snn(timesteps: int = 4) -> SpikingNetwork:
    snn = load_snn(ZOO)
    snn.timesteps = timesteps
    return snn


def scale_first_layer(snn: SpikingNetwork, factor: float) -> SpikingNetwork:
    """Conv 1 (weights and bias) and its neuron's threshold times ``factor``, conv 2's weights
    divided by it: the same function written on another scale."""
    conv1, neuron, conv2 = (snn.body.get_submodule(f"1.{i}") for i in (0, 1, 3))
    with torch.no_grad():
        conv1.weight.mul_(factor)
        conv1.bias.mul_(factor)
        neuron.threshold.mul_(factor)
        conv2.weight.div_(factor)
    neuron.min_threshold *= factor
    return snn


@pytest.mark.parametrize("factor", [1e-3, 1e4])
def test_suite_numbers_do_not_depend_on_how_the_model_is_written(mnist, factor):
    x, y = mnist
    reference = run_suite("quick", demo_snn(), x, y, AT_EPS)
    scaled = scale_first_layer(demo_snn(), factor)
    with torch.no_grad():
        assert torch.allclose(scaled(x), demo_snn()(x), atol=1e-3)
    result = run_suite("quick", scaled, x, y, AT_EPS)
    assert 0 < reference.robust < 1
    assert result.robust == reference.robust
    assert [r.lowered for r in result.ensemble.records] == \
        [r.lowered for r in reference.ensemble.records]  # fmt: skip


def test_rescaled_context_keeps_the_function_and_restores_the_model(mnist):
    x, _ = mnist
    snn = demo_snn()
    before = {k: v.clone() for k, v in snn.thresholds.items()}
    with torch.no_grad():
        out = snn(x)
        with rescaled(snn, 1e4):
            assert torch.allclose(snn(x), out, atol=1e-3)
            assert next(snn.neurons()).threshold > 1e4
    assert all(torch.equal(before[k], v) for k, v in snn.thresholds.items())
    with pytest.raises(ConvertSNNError, match="> 0"), rescaled(snn, 0):
        pass


def suite_and_flags(snn, x, y):
    result = run_suite("quick", snn, x, y, AT_EPS)
    flags = {f.check: f for f in run_checks(snn, x, y, result, EvalSettings(
        check_samples=16, reparametrisation_samples=12))}  # fmt: skip
    return result, flags


def test_planted_zero_surrogate_is_flagged_and_does_not_move_the_number(mnist):
    x, y = mnist
    clean_result, clean_flags = suite_and_flags(demo_snn(), x, y)
    assert not clean_flags["gradients"].raised, clean_flags["gradients"].message
    assert not clean_flags["reparametrisation"].raised, clean_flags["reparametrisation"].message
    masked = demo_snn()
    masked.set_gradient("bptt", "rect:1e-6:abs")  # zero almost everywhere
    result, flags = suite_and_flags(masked, x, y)
    assert flags["gradients"].raised and "bptt:rect:1e-06:abs" in flags["gradients"].message
    assert abs(result.robust - clean_result.robust) <= 0.02 + 1e-9


def test_planted_rescaled_layers_are_flagged_and_do_not_move_the_number(mnist):
    x, y = mnist
    clean_result, _ = suite_and_flags(demo_snn(), x, y)
    masked = scale_first_layer(demo_snn(), 1e4)
    masked.set_gradient("bptt", "triangle:1:abs")  # an old-style absolute surrogate
    result, flags = suite_and_flags(masked, x, y)
    raised = {name for name, f in flags.items() if f.raised}
    assert {"gradients", "reparametrisation"} <= raised, flags
    assert abs(result.robust - clean_result.robust) <= 0.02 + 1e-9


class Quantise(nn.Module):
    """Round the image to 1/255 steps: zero gradient everywhere."""

    def forward(self, x):
        return torch.round(x * 255) / 255


def test_planted_input_quantisation_is_flagged(mnist):
    x, y = mnist
    masked = demo_snn()
    masked.body = nn.Sequential(Quantise(), masked.body)
    result = run_suite("quick", masked, x, y, AT_EPS)
    flags = {f.check: f for f in run_checks(masked, x, y, result, EvalSettings(
        check_samples=16, reparametrisation_samples=0))}  # fmt: skip
    assert flags["gradients"].raised and "every gradient mode" in flags["gradients"].message


def test_families_keep_their_own_worst_case(mnist):
    x, y = mnist
    snn = demo_snn()
    suite = Suite("fam", "", ("bptt:sigmoid:20:detach", "bptr"), (), False,
                  (Stage("fgsm"), Stage("pgd", {"steps": 3})), families=True, more_steps=0)  # fmt: skip
    result = run_suite(suite, snn, x, y, AT_EPS)
    groups = result.ensemble.groups
    assert list(groups) == ["fgsm", "pgd-3"]
    assert torch.equal(result.ensemble.correct, torch.minimum(*groups.values()))
    summary = result.summary()["groups"]
    assert summary["pgd-3"] <= summary["fgsm"] + 1e-9 or summary["fgsm"] < 1
    assert {r.group for r in result.runs} == {"fgsm", "pgd-3"}
    assert len(S001.stages) * 19 == sum(
        len(S001.candidates) for st in S001.stages if st.modes == "all"
    )


def evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args), "--device", "cpu"])


@pytest.fixture
def mnist_npz(tmp_path):
    data = np.load(SAMPLE)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_test=data["x_test"][:10], y_test=data["y_test"][:10])
    return path


def test_cli_per_sample_output_adversarials_transfer_and_resume(mnist_npz, tmp_path):
    out, adv, state = tmp_path / "r.json", tmp_path / "adv.npz", tmp_path / "state"
    args = [ZOO, "--data", mnist_npz, "-T", "4", "--suite", "quick", "--eps", "0.15",
            "--no-ann", "--out", out, "--resume", state, "--save-adversarial", adv,
            "--transfer-from", ZOO]  # fmt: skip
    result = evaluate(*args)
    assert result.exit_code == 0, result.output
    detail = json.loads(out.read_text())["rows"][0]["details"]["0.15"]
    samples = detail["samples"]
    assert len(samples) == 10 and {"survives", "broken_by", "margin"} <= set(samples[0])
    assert detail["robust"] == pytest.approx(sum(s["survives"] for s in samples) / 10)
    labels = {r["label"] for r in detail["runs"]}
    assert all(s["broken_by"] in labels for s in samples if not s["survives"])
    assert all((s["margin"] > 0) == s["survives"] for s in samples)
    assert any(r["label"].startswith("transfer") for r in detail["runs"])
    assert detail["runs"][-1]["note"] == "more-steps check"
    saved = np.load(adv)
    assert saved["labels"].shape == (10,) and saved["SNN T=4 eps=0.15"].shape == (10, 1, 28, 28)
    # the state holds everything the report counts, the more-steps run included
    again = evaluate(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["rows"][0]["details"]["0.15"]["robust"] == detail["robust"]
    assert "--save-adversarial" in (tmp_path / "state" / "config.json").read_text() or True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "pgd", "--gradient", "bptt:rect:0"], "positive number"),
        (["--attack", "pgd", "--gradient", "bptt:sigmoid:detach:20"], "cannot read"),
        (["--attack", "pgd", "--gradient", "adaptive:triangle:-1"], "> 0"),
        (["--suite", "quick", "--transfer-from", "missing.onnx"], "not found"),
        (["--suite", "quick", "--save-adversarial", "adv.txt"], ".npz"),
        (["--save-adversarial", "adv.npz"], "need --suite or --attack"),
    ],
)
def test_cli_bad_evaluation_v2_options(mnist_npz, args, message):
    result = evaluate(ZOO, "--data", mnist_npz, "--no-ann", *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output.splitlines()[-1], result.output


class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradients_are_counted_flagged_and_not_passed_on(images):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()

    class Broken(nn.Module):
        def forward(self, x):
            return linear(NaNGradient.apply(x))

    model = Broken()
    y = linear(images).argmax(1)
    suite = Suite("nan", "", ("native",), (), False, (Stage("pgd", {"steps": 3}),), more_steps=0)
    result = run_suite(suite, model, images, y, QUIET)
    assert torch.isfinite(result.ensemble.x_adv).all()
    assert result.ensemble.records[0].gradients["nonfinite"] > 0
    flags = {
        f.check: f for f in run_checks(model, images, y, result, EvalSettings(check_samples=8))
    }
    assert flags["gradients"].raised and "non-finite" in flags["gradients"].message


@pytest.mark.parametrize("name", ["standard", "full", "s001"])
def test_suites_that_cannot_run_on_a_model_stop_before_attacking(images, name):
    torch.manual_seed(0)
    three_classes = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 3)).eval()
    y = three_classes(images).argmax(1)
    with pytest.raises(ConvertSNNError, match="at least 4 classes") as err:
        run_suite(name, three_classes, images, y, QUIET)
    assert "\n" not in str(err.value)
    assert run_suite("quick", three_classes, images, y, QUIET).robust < 1
