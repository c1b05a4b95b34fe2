"""Dithered initial membrane: IF neurons whose membrane starts at theta * U[v_init - a, v_init + a]."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from convertsnn import convert, save_snn
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.settings import STOCHASTIC_EOT, default_eot
from convertsnn.export.nir import to_nir
from convertsnn.export.onnx import OnnxModel, export_onnx, onnx_logits_with_draws, unrolled_draws
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import load_snn, read_document
from tests.cli_helpers import assert_one_line_error, convert_command, run_cli
from tests.finetune_helpers import separable_npz, tiny_snn_file


def constant_input(current: torch.Tensor, steps: int) -> torch.Tensor:
    """``current`` [B, N] repeated for ``steps`` steps, time folded: [T*B, N]."""
    return current.unsqueeze(0).expand(steps, *current.shape).flatten(0, 1)


def test_initial_membranes_are_drawn_in_range_per_input():
    neuron = IFNeuron(threshold=2.0, dither=0.25)
    seq = torch.zeros(4, 500, 3)
    draws = neuron.initial_membrane(seq)
    assert draws.shape == (500, 3)
    assert 0.25 <= draws.min() < 0.3 and 0.7 < draws.max() <= 0.75
    assert not torch.equal(draws, neuron.initial_membrane(seq))
    assert IFNeuron(threshold=2.0).initial_membrane(seq) == 0.5


def test_full_dither_makes_the_expected_rate_linear():
    """With a = 0.5 the initial membrane is U[0, theta]: E[floor(T c / theta + v)] = T c / theta
    (non-subtractive dither), so the mean rate equals the input, not its rounding."""
    steps, current = 4, torch.tensor([[0.3, 0.55, 0.8]])
    plain = IFNeuron(1.0)
    plain.timesteps = steps
    rounded = plain(constant_input(current, steps)).view(steps, -1).mean(0)
    assert torch.allclose(rounded, torch.tensor([0.25, 0.5, 0.75]))
    dithered = IFNeuron(1.0, dither=0.5)
    dithered.timesteps = steps
    torch.manual_seed(0)
    batch = current.expand(4000, 3)
    rate = dithered(constant_input(batch, steps)).view(steps, 4000, 3).mean((0, 1))
    assert torch.allclose(rate, current[0], atol=0.01)


@pytest.mark.parametrize("per_channel", [False, True])
def test_dithered_paths_agree_on_the_same_draw(per_channel):
    theta = torch.tensor([0.8, 1.2]) if per_channel else torch.tensor(1.0)
    neuron = IFNeuron(theta, surrogate="sigmoid:3", dither=0.25)
    neuron.timesteps = 5
    x = (torch.randn(5 * 3, 2, 4) * 0.8).requires_grad_(True)
    with torch.random.fork_rng():
        fused = neuron(x)  # _IFDynamics
    with torch.random.fork_rng():
        with torch.no_grad():
            lean = neuron(x)
    with torch.random.fork_rng():
        v_init = neuron.initial_membrane(x.view(5, 3, 2, 4))
    reference = neuron.simulate(x.view(5, 3, 2, 4), neuron._theta(3), neuron.surrogate, v_init)
    assert torch.equal(fused, lean) and torch.equal(fused, reference.flatten(0, 1))
    g = torch.randn_like(fused)
    grads = torch.autograd.grad(fused, [x, neuron.threshold], g)
    expected = torch.autograd.grad(reference.flatten(0, 1), [x, neuron.threshold], g)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_signed_burst_and_rate_backprop_neurons_take_the_draws():
    x = torch.rand(4 * 64, 5)
    for settings in ({"signed": True}, {"burst": 3}):
        neuron = IFNeuron(1.0, dither=0.25, **settings)
        neuron.timesteps = 4
        assert not torch.equal(neuron(x), neuron(x))
    neuron = IFNeuron(1.0, dither=0.25)
    neuron.timesteps, neuron.gradient_mode = 4, "bptr"
    x.requires_grad_(True)
    neuron(x).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "settings, message",
    [({"dither": 0.6}, r"from 0 \(off\) to 0.5"), ({"dither": -0.1}, "half-width"),
     ({"v_init": 0.2, "dither": 0.25}, "to 0.2 with v_init 0.2"), ({"dither": True}, "got True")],
)  # fmt: skip
def test_dither_out_of_range_is_refused(settings, message):
    with pytest.raises(ConvertSNNError, match=message):
        IFNeuron(1.0, **settings)


@pytest.fixture
def snn(tiny_resnet, images):
    return convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max", dither=0.25)


def test_a_dithered_network_is_random_saved_and_evaluated_with_eot(snn, images, tmp_path):
    assert snn.stochastic and "dither 0.25" in snn.randomness
    assert default_eot(snn) == STOCHASTIC_EOT and snn.metadata["conversion"]["dither"] == 0.25
    assert not torch.equal(snn(images), snn(images))
    with snn.gradient("ann"):  # the source-ANN view has no membrane
        assert torch.equal(snn(images), snn(images))
    path = save_snn(snn, tmp_path / "dithered.safetensors")
    assert read_document(path)[0]["version"] == 3
    loaded = load_snn(path)
    assert [n.dither for n in loaded.neurons()] == [0.25] * len(list(snn.neurons()))
    list(loaded.neurons())[-1].v_init = 0.1  # a refused value changes no neuron
    with pytest.raises(ConvertSNNError, match=r"to 0\.1 with v_init 0\.1"):
        loaded.set_dither(0.2)
    assert [n.dither for n in loaded.neurons()] == [0.25] * len(list(snn.neurons()))
    list(loaded.neurons())[-1].v_init = 0.5
    loaded.set_dither(0)
    assert not loaded.stochastic and default_eot(loaded) == 1
    assert read_document(save_snn(loaded, tmp_path / "plain.safetensors"))[0]["version"] == 1
    with pytest.raises(ConvertSNNError, match=r"random \(the dithered initial membrane"):
        to_nir(snn)


def test_onnx_export_draws_the_initial_membrane_in_the_graph(snn, images, tmp_path):
    """One ``RandomUniformLike`` per neuron; fed convertsnn's draws (same seed) the file gives
    convertsnn's logits, run as it is it draws anew and agrees in expectation."""
    snn.metadata["input_size"] = list(images.shape[1:])
    path = export_onnx(snn, tmp_path / "dithered.onnx")
    nodes = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert nodes.count("RandomUniformLike") == len(list(snn.neurons()))
    with torch.no_grad():
        torch.manual_seed(5)
        reference = snn(images)
    torch.manual_seed(5)
    logits = onnx_logits_with_draws(path, images, unrolled_draws(snn, images))
    assert (logits - reference).abs().max() <= 1e-5
    exported = OnnxModel(path)
    runs = torch.stack([exported(images) for _ in range(200)])
    assert not torch.equal(runs[0], runs[1])
    with torch.no_grad():
        ours = torch.stack([snn(images) for _ in range(200)])
    spread = torch.maximum(runs.std(0), ours.std(0)) / 200**0.5
    assert ((runs.mean(0) - ours.mean(0)).abs() <= 5 * spread + 1e-4).float().mean() >= 0.99


def test_cli_evaluate_and_finetune_with_dither(tmp_path):
    root = tmp_path
    data = separable_npz(root / "data.npz", n=40)
    plain = tiny_snn_file(root / "snn.safetensors", data, timesteps=3)
    out = root / "r.json"
    result = run_cli("evaluate", plain, "--data", data, "--dither", "0.25", "--attack", "fgsm",
                     "--eps", "4/255", "--no-ann", "--limit", "8", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["eot"] == STOCHASTIC_EOT and document["dither"] == 0.25
    flags = document["rows"][0]["details"][f"{4 / 255:.6g}"]["flags"]
    determinism = next(f for f in flags if f["check"] == "determinism")
    assert not determinism["raised"] and "dither 0.25" in determinism["message"]
    assert not load_snn(plain).stochastic  # evaluate's --dither is not saved
    bad = run_cli("evaluate", plain, "--data", data, "--dither", "0.9", "--limit", "8")
    assert_one_line_error(bad, "dither is the half-width")
    run = root / "run"
    result = run_cli("finetune", plain, "--data", data, "--out-dir", run, "--epochs", "1",
                     "--batch-size", "16", "--val-fraction", "0.25", "--val-attack-steps", "2",
                     "--objective", "natural", "--dither", "0.2", "--device", "cpu",
                     "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {n.dither for n in load_snn(run / "last.safetensors").neurons()} == {0.2}
    bad = run_cli("finetune", plain, "--data", data, "--out-dir", root / "bad", "--dither", "2")
    assert_one_line_error(bad, "dither is the half-width")


def test_cli_convert_writes_the_dither(tmp_path):
    common, out = convert_command(tmp_path)
    result = run_cli(*common, "--dither", "0.3")
    assert result.exit_code == 0, result.output
    assert "dither 0.3" in result.output
    assert {n.dither for n in load_snn(out).neurons()} == {0.3}
    assert_one_line_error(run_cli(*common, "--dither", "0.7"), "dither is the half-width")


def test_checkpointed_backward_sees_the_same_draws(snn, images):
    """``memory="checkpoint"`` recomputes segments in the backward pass: with the random state
    restored there, the dithered network's input gradient equals the full-memory one."""
    grads = []
    for memory in ("full", "checkpoint"):
        snn.memory = memory
        x = images.clone().requires_grad_(True)
        torch.manual_seed(3)
        snn(x).logsumexp(1).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def dithered_file(tmp_path):
    """A small separable dataset and a tiny SNN file (T = 3) saved with dither 0.25."""
    data = separable_npz(tmp_path / "data.npz", n=40)
    path = tiny_snn_file(tmp_path / "snn.safetensors", data, timesteps=3)
    snn = load_snn(path)
    snn.set_dither(0.25)
    save_snn(snn, path)
    return data, path


def test_cli_export_checks_a_dithered_file_with_the_same_draws(tmp_path):
    data, path = dithered_file(tmp_path)
    result = run_cli("export", path, "--format", "onnx", "-o", tmp_path / "m.onnx",
                     "--check", data, "--check-images", "16")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 16 images, the same random draws in both: max |logit diff|" in result.output
    assert "100.0% of images within 0.0001" in result.output
    assert "two runs of the file draw differently" in result.output
    nir_result = run_cli("export", path, "--format", "nir", "-o", tmp_path / "m.nir")
    assert_one_line_error(nir_result, "NIR export supports deterministic models only")


def test_cli_export_writes_the_deterministic_view_with_dither_0(tmp_path):
    data, path = dithered_file(tmp_path)
    onnx_file = tmp_path / "m.onnx"
    result = run_cli("export", path, "--format", "onnx", "-o", onnx_file, "--dither", "0",
                     "--check", data, "--check-images", "16")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs convertsnn on 16 images" in result.output
    ops = {node.op_type for node in onnx.load(str(onnx_file)).graph.node}
    assert "RandomUniformLike" not in ops
    nir_result = run_cli(
        "export", path, "--format", "nir", "-o", tmp_path / "m.nir", "--dither", "0"
    )
    assert nir_result.exit_code == 0, nir_result.output
    bad = run_cli("export", path, "--format", "onnx", "-o", tmp_path / "b.onnx", "--dither", "0.8")
    assert_one_line_error(bad, "dither is the half-width")
