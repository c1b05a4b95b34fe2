"""Objectives (PGD-AT, TRADES, MART, TRADES-RFGSM), their inner attacks and regularisers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convertsnn.attacks.rfgsm import RFGSM
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.objectives import (
    Regularizer,
    get_objective,
    get_regularizer,
    kl_divergence,
    list_objectives,
    regularized_loss,
)
from convertsnn.objectives import regularizers as regularizer_module
from convertsnn.objectives.inner import InnerPGD
from convertsnn.snn.serialize import load_snn
from tests.finetune_helpers import separable_npz, tiny_ann, tiny_snn_file


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A tiny converted SNN (T=2) and a learnable batch."""
    root = tmp_path_factory.mktemp("objectives")
    data = separable_npz(root / "data.npz")
    snn_path = tiny_snn_file(root / "snn.safetensors", data)
    x, y = load_dataset(str(data), "train", limit=32).tensors()
    return snn_path, x, y


@pytest.mark.parametrize("name", ["pgd-at", "trades", "mart", "trades-rfgsm"])
def test_each_objective_loss_is_finite_and_falls(problem, name):
    snn_path, x, y = problem
    snn = load_snn(snn_path)
    objective = get_objective(name, eps=0.05, steps=None if name == "trades-rfgsm" else 3)
    optimizer = torch.optim.SGD(snn.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(0)
    losses = []
    for _ in range(12):
        snn.train()
        out = objective(snn, x, y)
        assert math.isfinite(out.loss.item()) and out.loss.dim() == 0
        assert out.adv_logits.shape == out.clean_logits.shape == (32, 3)
        assert (out.x_adv - x).abs().max() <= 0.05 + 1e-6
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


def test_kl_direction_matches_kldivloss_of_trades_and_seed001():
    torch.manual_seed(0)
    clean, adv = torch.randn(5, 4), torch.randn(5, 4)
    expected = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="none").sum(1)
    assert torch.allclose(kl_divergence(clean, adv), expected, atol=1e-6)
    assert torch.allclose(kl_divergence(clean, clean), torch.zeros(5), atol=1e-6)


def test_trades_and_mart_losses_follow_their_papers():
    torch.manual_seed(0)
    model = tiny_ann()
    x, x_adv = torch.rand(6, 3, 6, 6), torch.rand(6, 3, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    clean, adv = model(x), model(x_adv)
    trades, _, _ = get_objective("trades", eps=0.1).loss(model, x, x_adv, y)
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
    assert torch.allclose(trades, F.cross_entropy(clean, y) + 6 * kl, atol=1e-5)

    mart, _, _ = get_objective("mart", eps=0.1).loss(model, x, x_adv, y)
    p_adv, p_clean = F.softmax(adv, 1), F.softmax(clean, 1)
    wrong = p_adv.clone()
    wrong[torch.arange(6), y] = -1
    runner_up = wrong.argmax(1)
    bce = F.cross_entropy(adv, y) - torch.log(1.0001 - p_adv[torch.arange(6), runner_up]).mean()
    kl_each = (p_clean * (p_clean.log() - p_adv.log())).sum(1)
    weighted = (kl_each * (1.0000001 - p_clean[torch.arange(6), y])).mean()
    assert torch.allclose(mart, bce + 4 * weighted, atol=1e-5)


def test_rfgsm_is_a_random_step_then_a_gradient_step():
    torch.manual_seed(0)
    model = tiny_ann().eval()
    x = torch.rand(8, 3, 6, 6) * 0.8 + 0.1
    with torch.no_grad():
        clean = model(x)
    eps = 2 / 255
    x_adv = RFGSM(model, eps, alpha=1 / 255, loss="kl")(x, clean)
    delta = (x_adv - x).abs()
    assert delta.max() <= eps + 1e-6
    # a +-1/255 random step plus a +-1/255 gradient step: every pixel moves by 0 or 2/255
    assert torch.all((delta < 1e-6) | ((delta - eps).abs() < 1e-6))
    # with alpha = 0 it is FGSM on the KL, which moves every pixel with a non-zero gradient
    x_fgsm = RFGSM(model, eps, alpha=0, loss="kl")(x, clean + 0.5 * torch.randn_like(clean))
    assert ((x_fgsm - x).abs() - eps).abs().max() < 1e-6
    x_ce = RFGSM(model, eps, alpha=1 / 255)(x, torch.zeros(8, dtype=torch.long))
    assert (x_ce - x).abs().max() <= eps + 1e-6
    with pytest.raises(ConvertSNNError, match="alpha"):
        RFGSM(model, eps, alpha=3 / 255)


def test_inner_pgd_raises_its_loss_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = tiny_ann().eval()
    x, y = torch.rand(16, 3, 6, 6), torch.randint(0, 3, (16,))
    for start in ("uniform", "normal", "none"):
        x_adv = InnerPGD(model, 0.1, 5, 0.03, "ce", start)(x, y)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    with torch.no_grad():
        clean = model(x)
    x_kl = InnerPGD(model, 0.1, 5, 0.03, "kl", "normal")(x, clean)
    with torch.no_grad():
        assert kl_divergence(clean, model(x_kl)).mean() > 1e-4


def test_objective_settings_are_checked():
    assert {"mart", "pgd-at", "trades", "trades-rfgsm"} <= set(list_objectives())
    with pytest.raises(ConvertSNNError, match="unknown objective 'fgsm-at'; choose one of"):
        get_objective("fgsm-at", eps=0.1)
    with pytest.raises(ConvertSNNError, match="eps must be at least 0"):
        get_objective("trades", eps=-0.1)
    with pytest.raises(ConvertSNNError, match="has no beta"):
        get_objective("pgd-at", eps=0.1, beta=1.0)
    with pytest.raises(ConvertSNNError, match="one attack step"):
        get_objective("trades-rfgsm", eps=0.1, steps=3)
    with pytest.raises(ConvertSNNError, match="random start"):
        get_objective("trades", eps=0.1, random_start=False)
    seed001 = get_objective("trades-rfgsm", eps=2 / 255)
    assert (seed001.alpha, seed001.beta, seed001.steps) == (1 / 255, 2.0, 1)
    assert get_objective("pgd-at", eps=2 / 255).alpha == pytest.approx(0.5 / 255)
    assert get_objective("mart", eps=0.1).beta == 4.0


def test_a_registered_regularizer_composes_with_any_objective(monkeypatch):
    class LogitNorm(Regularizer):
        name = "logit-norm"

        def __call__(self, model, x, y, out):
            return model(out.x_adv).pow(2).mean()

    monkeypatch.setitem(regularizer_module._REGULARIZERS, "logit-norm", LogitNorm)
    torch.manual_seed(0)
    model = tiny_ann()
    x, y = torch.rand(4, 3, 6, 6), torch.randint(0, 3, (4,))
    regularizer = get_regularizer("logit-norm:0.5")
    out = get_objective("trades", eps=0.05)(model, x, y)
    base = out.loss.item()
    total = regularized_loss([regularizer], model, x, y, out)
    assert total.item() == pytest.approx(base + 0.5 * out.terms["logit-norm"], rel=1e-5)
    with pytest.raises(ConvertSNNError, match="unknown regularizer 'no-such-term'"):
        get_regularizer("no-such-term:0.1")
