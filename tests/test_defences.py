"""The seeds' other defences: SR (sparsity), MS-MPPD (mppd, rssnn-*), distillation, projection.

Each term is checked against a direct computation on a tiny model.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convertsnn.errors import ConvertSNNError
from convertsnn.finetune.projection import project_weights
from convertsnn.objectives import ObjectiveOutput, get_objective, get_regularizer
from convertsnn.objectives.mppd import IF_LEAK, last_spiking_layer
from convertsnn.objectives.sparsity import STEP
from convertsnn.snn.encoding import DirectEncoder, parse_encoder
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn
from tests.finetune_helpers import separable_npz, tiny_ann, tiny_snn_file


def output_for(x_adv: torch.Tensor) -> ObjectiveOutput:
    empty = torch.zeros(len(x_adv), 3)
    return ObjectiveOutput(torch.zeros(()), empty, empty, x_adv)


def linear_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(8, 3)


def test_sparsity_is_the_finite_difference_of_the_true_vs_rival_probability():
    model = linear_model()
    x, y = torch.rand(5, 8), torch.tensor([0, 1, 2, 0, 1])
    term = get_regularizer("sparsity:0.01")
    value = term(model, x, y, output_for(x))
    # direct: f = sigmoid(z_y - z_j*), j* the strongest other class; v = sign(grad f)
    z = model(x).detach()
    rival = z.clone().scatter_(1, y[:, None], -1e9).argmax(1)
    w = model.weight.detach()
    direction = w[y] - w[rival]  # grad of the margin; sign(grad f) = sign(direction)

    def f(points):
        logits = model(points).detach()
        return torch.sigmoid(logits.gather(1, y[:, None]) - logits.gather(1, rival[:, None]))

    shifted = x + STEP * direction.sign()
    expected = ((f(shifted) - f(x)) / STEP).pow(2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # and it estimates ||grad_x f||_1^2 (f is smooth here)
    margin = (z.gather(1, y[:, None]) - z.gather(1, rival[:, None])).squeeze(1)
    slope = torch.sigmoid(margin) * (1 - torch.sigmoid(margin))
    l1_squared = (slope * direction.abs().sum(1)).pow(2).mean()
    assert value.item() == pytest.approx(l1_squared.item(), rel=0.05)
    assert term.weight == 0.01


def test_sparsity_gives_parameter_gradients_through_both_passes():
    model = linear_model(1)
    x, y = torch.rand(6, 8), torch.randint(0, 3, (6,))
    get_regularizer("sparsity")(model, x, y, output_for(x)).backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_sparsity_sees_the_same_noise_in_both_passes_of_a_stochastic_encoder():
    model = linear_model(2)
    x, y = torch.rand(6, 8), torch.randint(0, 3, (6,))
    clean = get_regularizer("sparsity")(model, x, y, output_for(x)).item()
    noisy_snn = SpikingNetwork(model, 4, encoder="gaussian:0.001")
    torch.manual_seed(0)
    noisy = get_regularizer("sparsity")(noisy_snn, x, y, output_for(x)).item()
    # with independent draws the difference quotient would be ~ noise / h = 0.1 per logit
    assert noisy == pytest.approx(clean, rel=0.05)


def one_layer_snn(leak: float = 1.0, timesteps: int = 5) -> SpikingNetwork:
    """Linear -> IF neuron -> Linear: the last spiking layer's current is W1 x + b1 each step."""
    torch.manual_seed(3)
    body = nn.Sequential(nn.Linear(6, 4), IFNeuron(0.5, leak=leak), nn.Linear(4, 3))
    return SpikingNetwork(body, timesteps)


@pytest.mark.parametrize("leak", [1.0, 0.8])
def test_mppd_matches_the_closed_form_of_the_integrated_difference(leak):
    snn = one_layer_snn(leak)
    x, x_adv = torch.rand(3, 6), torch.rand(3, 6)
    value = get_regularizer("mppd")(snn, x, torch.zeros(3, dtype=torch.long), output_for(x_adv))
    first = snn.body[0]
    diff = (first(x) - first(x_adv)).detach()  # the same at every step (direct coding)
    lam = leak if leak < 1 else IF_LEAK
    # e[t] = sum_{s<=t} lam^(t-s) diff = diff (1 - lam^t) / (1 - lam)
    factors = [(1 - lam**t) / (1 - lam) for t in range(1, 6)]
    expected = sum(f * f for f in factors) / 5 * (diff / 0.5).pow(2).mean()  # threshold 0.5
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert first.weight.grad.abs().sum() > 0


def test_mppd_needs_a_spiking_network():
    model = tiny_ann()
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(ConvertSNNError, match="MS-MPPD needs a spiking network"):
        get_regularizer("mppd")(model, x, torch.zeros(2, dtype=torch.long), output_for(x))
    with pytest.raises(ConvertSNNError, match="MS-MPPD needs a spiking network"):
        get_regularizer("mppd").setup(model)  # before training starts


def test_last_spiking_layer_follows_the_graph_of_a_converted_model(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data))
    nodes = [n.target for n in snn.body.graph.nodes if n.op == "call_module"]
    neurons = [t for t in nodes if isinstance(snn.body.get_submodule(t), IFNeuron)]
    assert last_spiking_layer(snn) is snn.body.get_submodule(neurons[-1])


def test_rssnn_loss_is_half_clean_half_perturbed_ce_plus_rho_v():
    snn = one_layer_snn()
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    objective = get_objective("rssnn-gaussian", eps=8 / 255, beta=2.0)
    out = objective(snn, x, y)
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert (out.x_adv - x).abs().max() > 0
    ce_clean = F.cross_entropy(snn(x), y)
    ce_adv = F.cross_entropy(snn(out.x_adv), y)
    v = get_regularizer("mppd")(snn, x, y, out)
    expected = 0.5 * ce_clean + 0.5 * ce_adv + 2.0 * v
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.terms["mppd"] == pytest.approx(v.item(), rel=1e-5)


def test_rssnn_fgsm_is_one_step_inside_the_ball(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data))
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 3, (8,))
    out = get_objective("rssnn-fgsm", eps=4 / 255)(snn, x, y)
    assert (out.x_adv - x).abs().max() <= 4 / 255 + 1e-6
    assert math.isfinite(out.loss.item()) and out.terms["mppd"] >= 0
    with pytest.raises(ConvertSNNError, match="one perturbation of size eps"):
        get_objective("rssnn-fgsm", eps=4 / 255, steps=3)


def test_natural_objective_is_clean_cross_entropy():
    model = linear_model(4)
    x, y = torch.rand(5, 8), torch.randint(0, 3, (5,))
    out = get_objective("natural", eps=0)(model, x, y)
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(x), y).item())
    assert torch.equal(out.x_adv, x)


def test_distill_is_the_kl_to_the_frozen_source_ann(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data))
    snn.encoder = parse_encoder("gaussian:0.05")
    x, y = torch.rand(6, 3, 6, 6), torch.randint(0, 3, (6,))
    term = get_regularizer("distill:0.5")
    term.setup(snn)
    with snn.gradient("ann"), torch.no_grad():
        snn.encoder = DirectEncoder()
        teacher = snn(x)
        snn.encoder = parse_encoder("gaussian:0.05")
    torch.manual_seed(5)
    value = term(snn, x, y, output_for(x))
    torch.manual_seed(5)
    student = snn(x)
    expected = F.softmax(teacher, 1) * (F.log_softmax(teacher, 1) - F.log_softmax(student, 1))
    assert value.item() == pytest.approx(expected.sum(1).mean().item(), rel=1e-5)
    with torch.no_grad():  # the teacher is a snapshot: training the SNN does not move it
        for p in snn.parameters():
            p.add_(0.1)
    assert torch.equal(term.teacher(x), teacher)
    with pytest.raises(ConvertSNNError, match="distils a source ANN into a spiking network"):
        get_regularizer("distill").setup(tiny_ann())


def test_distill_after_natural_reuses_the_training_logits(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data))
    x, y = torch.rand(6, 3, 6, 6), torch.randint(0, 3, (6,))
    term = get_regularizer("distill")
    term.setup(snn)
    calls = []
    snn.register_forward_hook(lambda *_: calls.append(1))
    out = get_objective("natural", eps=0)(snn, x, y)
    value = term(snn, x, y, out)
    assert len(calls) == 1  # one student pass for the loss and the distillation term
    assert out.train_logits.requires_grad and torch.equal(out.clean_logits, out.train_logits)
    expected = term(snn, x, y, output_for(x))  # without reusable logits: its own forward pass
    assert len(calls) == 2 and value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_layer_distill_is_the_mean_relative_hidden_error_at_the_adversarial_images(tmp_path):
    data = separable_npz(tmp_path / "data.npz")
    snn = load_snn(tiny_snn_file(tmp_path / "snn.safetensors", data))
    x, y = torch.rand(6, 3, 6, 6), torch.randint(0, 3, (6,))
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    term = get_regularizer("layer-distill:2")
    term.setup(snn)
    value = term(snn, x, y, output_for(x_adv))
    # direct: each spiking layer's output averaged over T against the ANN view's activation
    outputs = {}
    hooks = [
        snn.body.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name in snn.thresholds
    ]
    with snn.gradient("ann"), torch.no_grad():
        snn(x_adv)
    target = dict(outputs)
    snn(x_adv)
    for hook in hooks:
        hook.remove()
    errors = []
    for name in snn.thresholds:
        rate = outputs[name].reshape(snn.timesteps, len(x), *target[name].shape[1:]).mean(0)
        errors.append((rate - target[name]).square().sum() / target[name].square().sum())
    assert len(errors) >= 2 and term.weight == 2
    assert value.item() == pytest.approx(torch.stack(errors).mean().item(), rel=1e-5)
    value.backward()  # the gradient reaches the SNN's weights through the surrogate
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in snn.parameters())
    assert term.teacher is not None and not any(p.requires_grad for p in term.teacher.parameters())
    with pytest.raises(ConvertSNNError, match="distils a source ANN into a spiking network"):
        get_regularizer("layer-distill").setup(tiny_ann())


def test_weight_projection_is_the_parseval_step():
    torch.manual_seed(6)
    conv, linear, frozen = nn.Conv2d(2, 3, 3), nn.Linear(4, 5), nn.Linear(3, 3)
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(conv, nn.Flatten(), linear, frozen)
    before = {m: m.weight.detach().clone() for m in (conv, linear, frozen)}
    project_weights(model, 0.1)
    w = before[conv].reshape(3, -1)
    expected = (1.1 * w - 0.1 * w @ w.T @ w).view_as(conv.weight)
    assert torch.allclose(conv.weight, expected)
    w = before[linear]
    assert torch.allclose(linear.weight, 1.1 * w - 0.1 * w @ w.T @ w)
    assert torch.equal(frozen.weight, before[frozen])
    orthogonal = nn.Linear(4, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    orthogonal.weight.data.copy_(q)
    project_weights(orthogonal, 0.1)
    assert torch.allclose(orthogonal.weight, q, atol=1e-6)
