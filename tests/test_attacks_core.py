import pytest
import torch
from torch import nn

from convertsnn import convert
from convertsnn.attacks import FGSM, PGD
from convertsnn.attacks.base import frozen_parameters
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
