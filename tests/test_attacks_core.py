import pytest
import torch
from torch import nn

from convertsnn import convert
from convertsnn.attacks import FGSM, PGD
from convertsnn.attacks.base import frozen_parameters
from convertsnn.attacks.restarts import RestartingAttack
from convertsnn.errors import ConvertSNNError


@pytest.fixture
def snn(tiny_resnet, images):
    return convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()


@pytest.mark.parametrize(
    "surrogate", ["triangle:1", "sigmoid:4", "atan:2", "rect:1", "exp:1", "ste"]
)
def test_snn_input_gradients_are_nonzero_in_eval_mode(snn, images, surrogate):
    x = images.clone().requires_grad_(True)
    with snn.gradient("bptt", surrogate):
        loss = nn.functional.cross_entropy(snn(x), torch.zeros(len(x), dtype=torch.long))
        loss.backward()
    assert not snn.training
    assert torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5


@pytest.mark.parametrize("mode", ["bptr", "ann"])
def test_other_gradient_modes_give_gradients(snn, images, mode):
    x = images.clone().requires_grad_(True)
    with snn.gradient(mode):
        snn(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert snn.gradient_mode == "bptt"  # restored


def linear_model() -> nn.Module:
    """A linear classifier whose decision flips with a small L-inf perturbation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10))
    return model.eval()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
@pytest.mark.parametrize("attack_cls", [FGSM, PGD])
def test_attacks_stay_in_the_ball_and_box(images, attack_cls, norm, eps):
    model = linear_model()
    y = model(images).argmax(1)
    x_adv = attack_cls(model, eps, norm=norm)(images, y)
    delta = (x_adv - images).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_breaks_a_vulnerable_model(images):
    model = linear_model()
    y = model(images).argmax(1)
    x_adv = PGD(model, 16 / 255, steps=20)(images, y)
    assert (model(x_adv).argmax(1) == y).float().mean() < 0.1


def test_pgd_through_the_snn_lowers_accuracy(snn, images):
    y = snn(images).argmax(1)
    x_adv = PGD(snn, 16 / 255, steps=10)(images, y)
    assert (snn(x_adv).argmax(1) == y).float().mean() < 0.5


def test_bad_attack_settings():
    with pytest.raises(ConvertSNNError):
        PGD(linear_model(), -0.1)
    with pytest.raises(ConvertSNNError):
        PGD(linear_model(), 0.1, norm="l1")
    with pytest.raises(ConvertSNNError):
        PGD(linear_model(), 0.1, loss="hinge")


def test_parameters_are_frozen_while_an_attack_runs(snn, images):
    """Inside an attack no parameter requires grad (input gradients only); afterwards the
    parameters that learned learn again and the frozen ones stay frozen."""
    first = next(snn.parameters())
    first.requires_grad_(False)
    seen = []

    class Recording(PGD):
        def perturb(self, x, y):
            seen.append(any(p.requires_grad for p in self.model.parameters()))
            return super().perturb(x, y)

    y = snn(images).argmax(1)
    frozen_run = Recording(snn, 8 / 255, steps=2, random_start=False)(images, y)
    assert seen == [False]
    assert not first.requires_grad
    assert all(p.requires_grad for p in snn.parameters() if p is not first)
    first.requires_grad_(True)
    attack = PGD(snn.eval(), 8 / 255)
    learning_grad = attack.gradient(images, y)[0]  # called directly: parameters still learn
    with frozen_parameters(snn):
        frozen_grad = attack.gradient(images, y)[0]
    assert torch.allclose(frozen_grad, learning_grad, atol=1e-6)
    assert frozen_run.shape == images.shape


class ScriptedRuns(RestartingAttack):
    """Run r fools the samples (identified by their first pixel) listed in ``script[r]`` and
    returns points filled with r + 1."""

    def __init__(self, script: list[set[int]], on_survivors: bool) -> None:
        super().__init__(nn.Flatten(), eps=0.1, restarts=len(script))
        self.script, self.on_survivors, self.seen = script, on_survivors, []

    def run(self, x, y, target):
        run = len(self.seen)
        self.seen.append(x[:, 0, 0, 0].long().tolist())
        correct = torch.tensor([float(i not in self.script[run]) for i in self.seen[-1]])
        return torch.full_like(x, run + 1.0), correct


@pytest.mark.parametrize("on_survivors", [True, False])
def test_restarts_keep_each_samples_first_break(on_survivors):
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    attack = ScriptedRuns([{0}, {0, 1}, {2}, {3}], on_survivors)
    best = attack.perturb(x, torch.zeros(4, dtype=torch.long))
    # sample 0 keeps run 1's point, 1 run 2's, 2 run 3's; 3 breaks in run 4
    assert best[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    expected = [[0, 1, 2, 3], [1, 2, 3], [2, 3], [3]] if on_survivors else [[0, 1, 2, 3]] * 4
    assert attack.seen == expected


def test_restarts_stop_once_every_sample_is_broken():
    attack = ScriptedRuns([{0, 1}, {0, 1}], on_survivors=False)
    attack.perturb(torch.arange(2.0).view(2, 1, 1, 1), torch.zeros(2, dtype=torch.long))
    assert len(attack.seen) == 1


class NoisyLine(nn.Module):
    """Two classes split at mean pixel m = 0.5, logit margin ``20 (0.5 - m) + 6 u``,
    ``u ~ U[-1, 1]`` drawn per call: past m = 0.5 the mean logits misclassify, yet at m = 0.6 a
    third of the draws is still right; every draw is wrong only from m = 0.8."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        half = 10 * (0.5 - m) + 3 * (2 * torch.rand_like(m) - 1)
        return torch.stack([half, -half], dim=1)


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce", "square"])
def test_attacks_break_a_random_model_only_when_every_draw_misclassifies(attack):
    from convertsnn.attacks import build_attack
    from convertsnn.attacks.ensemble import expected_correct

    torch.manual_seed(0)
    x, y = torch.full((8, 1, 2, 2), 0.2), torch.zeros(8, dtype=torch.long)
    params = {"pgd": {"steps": 10, "random_start": False}, "apgd-ce": {"steps": 10},
              "square": {"queries": 200}}[attack]  # fmt: skip
    x_adv = build_attack(attack, NoisyLine(), eps=0.8, eot=8, **params)(x, y)
    # the mean-logit rule stops where a third (PGD, m = 0.6) or half (Square, m = 0.5) of the
    # draws is right; Square's pixels move in steps of 0.25, so m = 0.75 (1/12 right) may end it
    limit = 0.15 if attack == "square" else 0.05
    assert expected_correct(NoisyLine(), x_adv, y, draws=200).max() < limit
