"""Every attack on tiny models: it breaks a known-vulnerable model and stays in the ball and box."""

import itertools
import math

import pytest
import torch
from torch import nn

from convertsnn import convert
from convertsnn.attacks import APGDT, ATTACKS, PGD, PGDSearch, Square, Transfer, build_attack
from convertsnn.attacks.apgd import checkpoints
from convertsnn.attacks.passes import counting_passes
from convertsnn.attacks.pgd_search import WARMUP
from convertsnn.attacks.square import meta_pseudo_gaussian, pseudo_gaussian, window_fraction
from convertsnn.errors import ConvertSNNError

FAST = {
    "fgsm": {},
    "rfgsm": {},
    "pgd": {"steps": 10},
    "pgd-search": {"steps": 10, "queries": 20},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "targets": 3},
    "square": {"queries": 300},
    "transfer": {"steps": 10},
    "autoattack": {"version": "standard"},
}


def linear_model(classes: int = 10) -> nn.Module:
    """A linear classifier whose decision flips under small perturbations."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, classes)).eval()


def make(name, model, eps, norm, **extra):
    params = dict(FAST[name], **extra)
    if name == "transfer":
        params.setdefault("source", model)  # white-box transfer: the model is its own source
    return build_attack(name, model, eps, norm, **params)


def test_every_attack_is_tested():
    assert set(FAST) == set(ATTACKS)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("name", sorted(FAST))
def test_attack_breaks_a_vulnerable_model_within_the_ball_and_box(images, name, norm, eps):
    model = linear_model()
    y = model(images).argmax(1)
    torch.manual_seed(0)
    x_adv = make(name, model, eps, norm)(images, y)
    delta = (x_adv - images).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    accuracy = (model(x_adv).argmax(1) == y).float().mean()
    assert accuracy < (0.5 if name in ("square", "rfgsm") else 0.2), f"{name}: {accuracy}"


@pytest.mark.parametrize("name", sorted(FAST))
def test_attack_with_zero_eps_changes_nothing(images, name):
    model = linear_model()
    y = model(images).argmax(1)
    extra = {"queries": 20} if name == "square" else {}
    x_adv = make(name, model, 0.0, "linf", **extra)(images, y)
    assert torch.equal(x_adv, images)


def test_attacks_through_a_spiking_network(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    images = images[:16]
    y = snn(images).argmax(1)
    for name, params in (("apgd-ce", {"steps": 10}), ("apgd-t", {"steps": 5, "targets": 2}),
                         ("square", {"queries": 150})):  # fmt: skip
        torch.manual_seed(0)
        x_adv = build_attack(name, snn, 16 / 255, **params)(images, y)
        assert (snn(x_adv).argmax(1) == y).float().mean() < 0.5, name
    torch.manual_seed(0)
    x_adv = Transfer(snn, 16 / 255, steps=10)(images, y)  # from the source ANN
    assert (snn(x_adv).argmax(1) == y).float().mean() < 0.7


def test_apgd_checkpoints_follow_the_paper():
    marks = checkpoints(100)
    assert marks[:3] == [22, 41, 57]  # 0.22, then intervals shrinking by 0.03
    steps = [b - a for a, b in itertools.pairwise(marks)]
    assert min(steps) >= 6 and max(marks) <= 100


def test_apgd_targeted_needs_four_classes(images):
    model = linear_model(classes=3)
    with pytest.raises(ConvertSNNError, match="at least 4 classes"):
        APGDT(model, 0.1, steps=2)(images, model(images).argmax(1))


def test_square_building_blocks():
    assert window_fraction(0.8, 0, 5000) == 0.8
    assert window_fraction(0.8, 4999, 5000) == 0.8 / 512
    bump = pseudo_gaussian(5, 5)
    assert bump.argmax() == 12 and torch.isclose(bump.norm(), torch.tensor(1.0))
    meta = meta_pseudo_gaussian(6)
    assert torch.isclose(meta.norm(), torch.tensor(1.0)) and abs(float(meta.sum())) < 1e-5


def test_square_only_queries(images):
    class NoGradient(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = linear_model()

        def forward(self, x):
            with torch.no_grad():
                return self.inner(x)

    model = NoGradient()
    y = model(images).argmax(1)
    x_adv = Square(model, 8 / 255, queries=300)(images, y)
    assert (model(x_adv).argmax(1) == y).float().mean() < 0.5


def test_square_nearest_queries_only_the_samples_closest_to_the_boundary(images):
    model = linear_model()
    y = model(images).argmax(1)
    sizes = []
    model.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    Square(model, 1e-4, queries=50, nearest=0.25).perturb(images, y)
    near = math.ceil(0.25 * len(images))
    assert sizes[0] == len(images) and max(sizes[1:]) == near  # then only the nearest quarter
    sizes.clear()
    Square(model, 1e-4, queries=50).perturb(images, y)
    assert max(sizes[1:]) == len(images)
    with pytest.raises(ConvertSNNError, match="nearest"):
        Square(model, 0.1, nearest=0)


def test_bad_attack_settings():
    model = linear_model()
    with pytest.raises(ConvertSNNError, match="unknown attack"):
        build_attack("cw", model, 0.1)
    with pytest.raises(ConvertSNNError, match="black-box"):
        build_attack("square", model, 0.1, gradient_mode="bptr")
    with pytest.raises(ConvertSNNError, match="queries"):
        build_attack("pgd", model, 0.1, queries=10)
    with pytest.raises(ConvertSNNError, match="needs a source"):
        Transfer(model, 0.1)
    with pytest.raises(ConvertSNNError):
        Square(model, 0.1, queries=0)


class Shattered(nn.Module):
    """A linear classifier plus a pseudo-random jump term without gradient: the gradient sees
    only the smooth trend, as a surrogate sees only the trend of an SNN's spike counts."""

    def __init__(self, amplitude: float = 0.1) -> None:
        super().__init__()
        self.linear = linear_model()
        torch.manual_seed(1)
        self.register_buffer("mix", torch.randn(3 * 12 * 12, 10))
        self.amplitude = amplitude

    def forward(self, x):
        jumps = torch.sin(1e4 * x.detach().flatten(1) @ self.mix)  # changes with any pixel
        return self.linear(x) + self.amplitude * jumps


def test_pgd_search_finds_what_pgd_misses_on_a_shattered_output(images):
    model = Shattered()
    y = model(images).argmax(1)
    eps = 0.3 / 255  # too small for the trend alone
    torch.manual_seed(0)
    x_pgd = PGD(model, eps, steps=5, step=0.25)(images, y)
    torch.manual_seed(0)
    x_search = PGDSearch(model, eps, steps=5, step=0.25, queries=50)(images, y)
    assert (x_search - images).abs().max() <= eps + 1e-6
    assert x_search.min() >= 0 and x_search.max() <= 1
    survive_pgd = (model(x_pgd).argmax(1) == y).sum()
    survive_search = (model(x_search).argmax(1) == y).sum()
    assert survive_search < survive_pgd
    torch.manual_seed(0)  # without proposals it is PGD
    assert torch.equal(PGDSearch(model, eps, steps=5, step=0.25, queries=0)(images, y), x_pgd)


def test_pgd_search_gives_up_far_from_the_boundary(images):
    model = Shattered()
    y = model(images).argmax(1)
    eps = 0.3 / 255

    def search(give_up: float) -> tuple[torch.Tensor, int]:
        torch.manual_seed(0)
        attack = PGDSearch(model, eps, steps=5, step=0.25, queries=200, give_up=give_up)
        with counting_passes(model) as count:
            x_adv = attack(images, y)
        return x_adv, count.forward

    x_all, passes_all = search(0.0)
    x_never, passes_never = search(1e9)  # a bound no sample reaches: the same search
    assert torch.equal(x_all, x_never) and passes_never == passes_all
    _, passes_first = search(1e-9)  # every unbroken sample stops after the warm-up
    assert passes_first < passes_all
    torch.manual_seed(0)
    with counting_passes(model) as pgd_only:
        PGDSearch(model, eps, steps=5, step=0.25, queries=0)(images, y)
    assert passes_first - pgd_only.forward <= len(images) * (WARMUP + 1)


def test_pgd_search_settings():
    model = linear_model()
    with pytest.raises(ConvertSNNError, match="give_up"):
        PGDSearch(model, 0.1, give_up=-1)
    with pytest.raises(ConvertSNNError, match="flip"):
        PGDSearch(model, 0.1, flip=0)
    with pytest.raises(ConvertSNNError, match="queries"):
        PGDSearch(model, 0.1, queries=-1)
