"""The compiled runtime (convertsnn/snn/compiled.py): same spikes as the eager neuron, same
gradients within float rounding, eager fallback when compiling fails."""

import json
import os
import shutil
from contextlib import nullcontext

import pytest
import torch

from convertsnn.errors import ConvertSNNError
from convertsnn.snn import compiled
from convertsnn.snn.neurons import IFNeuron

# TorchInductor compiles the CPU kernels with a C++ compiler; without one the runtime falls back
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")),
    reason="no C++ compiler: the compiled runtime falls back to the eager neuron",
)

CASES = [  # (reset, leak, per-channel threshold, surrogate, input shape per step, dither)
    ("subtract", 1.0, False, "triangle:1", (3, 5, 5), 0.0),
    ("zero", 0.8, True, "sigmoid:3:abs", (3, 5, 5), 0.0),
    ("subtract", 0.9, True, "rect:0.5:detach", (3,), 0.0),
    ("subtract", 1.0, True, "triangle:1", (3, 5, 5), 0.25),
]


def _pair(reset, leak, per_channel, surrogate, shape, dither=0.0, steps=6, batch=4):
    torch.manual_seed(0)
    theta = torch.tensor([0.6, 1.1, 0.9]) if per_channel else 0.8
    neurons = []
    for runtime in ("eager", "compiled"):
        neuron = IFNeuron(threshold=theta, leak=leak, reset=reset, v_init=0.3, surrogate=surrogate,
                          dither=dither)  # fmt: skip
        neuron.timesteps, neuron.runtime = steps, runtime
        neurons.append(neuron)
    x = torch.randn(steps * batch, *shape) * 0.8
    return neurons, x, torch.randn(steps * batch, *shape)


@needs_compiler
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}-{len(c[4])}d-dither{c[5]}"
)
def test_compiled_neuron_matches_the_eager_one(case):
    (eager, fused), x, weights = _pair(*case)
    outputs = []
    for neuron in (eager, fused):
        torch.manual_seed(1)  # the same draws for dithered neurons
        with torch.no_grad():
            outputs.append(neuron(x))
    assert torch.equal(*outputs)
    results = []
    for neuron in (eager, fused):
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = neuron(xg)
        (out * weights).sum().backward()
        results.append((out.detach(), xg.grad, neuron.threshold.grad))
    (out_e, gx_e, gt_e), (out_c, gx_c, gt_c) = results
    assert (out_e > 0).any() and (out_e == 0).any()
    assert torch.equal(out_c, out_e)
    assert torch.allclose(gx_c, gx_e, atol=1e-5)
    assert torch.allclose(gt_c, gt_e, atol=1e-4, rtol=1e-4)
    assert compiled._failure is None, compiled._failure  # it ran compiled, not the fallback


@needs_compiler
@pytest.mark.parametrize("family", ["exp", "expd", "atan", "ste"])
def test_every_surrogate_family_has_the_eager_gradient(family):
    (eager, fused), x, weights = _pair("subtract", 1.0, False, family, (3,), steps=4)
    grads = []
    for neuron in (eager, fused):
        xg = x.clone().requires_grad_(True)
        (neuron(xg) * weights).sum().backward()
        grads.append((xg.grad, neuron.threshold.grad))
    assert torch.allclose(grads[1][0], grads[0][0], atol=1e-5)
    assert torch.allclose(grads[1][1], grads[0][1], atol=1e-4, rtol=1e-4)
    assert compiled._failure is None, compiled._failure


def both_runtimes(x: torch.Tensor, weights: torch.Tensor, steps: int, **neuron_settings):
    """``(outputs, input gradient, threshold gradient)`` of an eager and of a compiled
    ``IFNeuron(**neuron_settings)`` on ``x`` (loss ``sum(out * weights)``), on ``x``'s device;
    both draw the same random numbers (dithered neurons)."""
    results = []
    for runtime in ("eager", "compiled"):
        neuron = IFNeuron(**neuron_settings).to(x.device)
        neuron.timesteps, neuron.runtime = steps, runtime
        torch.manual_seed(4)
        with torch.no_grad():
            out = neuron(x)
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(4)
        (neuron(xg) * weights).sum().backward()
        results.append((out, xg.grad, neuron.threshold.grad))
    return results


@needs_compiler
@pytest.mark.parametrize(
    ("population", "leak", "per_channel"), [(4, 1.0, True), (20, 0.9, False), (8, 1.0, False)]
)
def test_a_population_runs_in_one_kernel_with_the_eager_spikes(population, leak, per_channel):
    """The members read the unexpanded input inside the kernel. On inputs this small
    ``Tensor.mean`` would sum the members in another order than member by member (8 and 20
    members): both runtimes use the one order of ``member_mean``."""
    torch.manual_seed(2)
    steps, batch = 5, 3
    theta = torch.tensor([0.6, 1.1, 0.9]) if per_channel else 0.8
    x = torch.randn(steps * batch, 3, 4, 4) * 0.8
    (out_e, gx_e, gt_e), (out_c, gx_c, gt_c) = both_runtimes(
        x, torch.randn_like(x), steps, threshold=theta, leak=leak, population=population
    )
    assert len(out_e.unique()) > 3  # member means, not one neuron's 0 or theta
    assert torch.equal(out_c, out_e)
    assert torch.allclose(gx_c, gx_e, atol=1e-5)
    assert torch.allclose(gt_c, gt_e, atol=1e-4, rtol=1e-4)
    assert compiled._failure is None, compiled._failure


@needs_compiler
@pytest.mark.parametrize(
    ("population", "per_channel", "dither"), [(1, True, 0.0), (1, False, 0.25), (4, True, 0.0)]
)
def test_channels_last_inputs_run_compiled_without_a_copy(population, per_channel, dither):
    """A ``channels_last`` feature map is read in place (channels innermost): the same outputs
    and gradients as the eager neuron, returned in the same layout."""
    torch.manual_seed(3)
    steps, batch = 4, 3
    theta = torch.tensor([0.6, 1.1, 0.9]) if per_channel else 0.8
    x = (torch.randn(steps * batch, 3, 4, 5) * 0.8).to(memory_format=torch.channels_last)
    weights = torch.randn_like(x)
    seq = x.view(steps, batch, *x.shape[1:])
    folded = compiled._fold(seq, torch.as_tensor(theta), 0.5, population)[0]
    assert folded.data_ptr() == x.data_ptr() and folded.shape == (steps, batch, 20, 3)
    (out_e, gx_e, gt_e), (out_c, gx_c, gt_c) = both_runtimes(
        x, weights, steps, threshold=theta, population=population, dither=dither
    )
    assert (out_e > 0).any() and (out_e == 0).any()
    assert torch.equal(out_c, out_e)
    assert out_c.is_contiguous(memory_format=torch.channels_last)
    assert gx_c.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(gx_c, gx_e, atol=1e-5)
    assert torch.allclose(gt_c, gt_e, atol=1e-4, rtol=1e-4)
    assert compiled._failure is None, compiled._failure


def test_frozen_threshold_gives_the_same_input_gradient():
    (eager, fused), x, weights = _pair(*CASES[0])
    grads = []
    for neuron in (eager, fused):
        neuron.threshold.requires_grad_(False)
        xg = x.clone().requires_grad_(True)
        (neuron(xg) * weights).sum().backward()
        grads.append(xg.grad)
        assert neuron.threshold.grad is None
    assert torch.allclose(grads[1], grads[0], atol=1e-5)


@pytest.mark.parametrize("runtime", ["eager", pytest.param("compiled", marks=needs_compiler)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_gradients_are_added_in_place(runtime, channels_last):
    """A neuron hands its input a gradient that is not a view, so where a neuron's output feeds
    a convolution and a residual sum autograd adds the two gradients in place, as for a ReLU (a
    view would keep its base alive: one more full-tensor add per block)."""
    neurons, x, _ = _pair(*CASES[1], steps=4)
    neuron = neurons[runtime == "compiled"]
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    seen = []

    def full_size_adds(act) -> int:
        """Out-of-place adds of two ``[T*B, ...]`` tensors in a forward and backward pass."""
        x_in = x.detach().requires_grad_(True)
        x_in.register_hook(lambda grad: seen.append(grad._is_view()))
        with torch.profiler.profile(record_shapes=True) as profile:
            h = act(x_in)
            act(conv(h) + h).sum().backward()
        shape = list(x.shape)
        return sum(
            e.count
            for e in profile.key_averages(group_by_input_shape=True)
            if e.key == "aten::add" and e.input_shapes[:2] == [shape, shape]
        )

    assert full_size_adds(neuron) == full_size_adds(torch.relu) == 1  # the residual sum
    assert seen[0] is False


def test_time_view_keeps_second_order_gradients():
    """The ``[T*B] -> [T, B]`` view detaches its gradient only when the backward pass records no
    graph: with ``create_graph=True`` gradients of gradients still reach the input."""
    from convertsnn.snn.neurons import unfold_time

    x = torch.randn(8, 3, requires_grad=True)
    (grad,) = torch.autograd.grad((unfold_time(x, 2) ** 3).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert torch.allclose(second, 6 * x)


def test_network_runtime_switch(tiny_resnet, images):
    from convertsnn import convert

    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    assert snn.runtime == "eager"
    with torch.no_grad():
        eager = snn(images)
        snn.runtime = "compiled"
        assert snn.runtime == "compiled" and all(n.runtime == "compiled" for n in snn.neurons())
        assert torch.equal(snn(images), eager)
    with pytest.raises(ConvertSNNError, match="unknown runtime 'jit'"):
        snn.runtime = "jit"


@needs_compiler
def test_a_channels_last_network_gives_the_same_logits_with_either_runtime(
    tiny_resnet, images, tmp_path
):
    from convertsnn import convert, load_snn, save_snn

    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    with torch.no_grad():
        nchw = snn(images)
    assert snn.layout == "nchw"
    snn.layout = "channels_last"
    assert snn.layout == "channels_last"
    assert snn.body.get_submodule("conv1").weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = snn(images)
        snn.runtime = "compiled"
        assert torch.equal(snn(images), eager)
    assert torch.allclose(eager, nchw, atol=1e-4)  # the convolutions round differently
    assert compiled._failure is None, compiled._failure
    loaded = load_snn(save_snn(snn, tmp_path / "snn.safetensors"))
    assert loaded.layout == "nchw"
    assert all(torch.equal(v, snn.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ConvertSNNError, match="unknown layout 'nhwc'; choose one of nchw"):
        snn.layout = "nhwc"


@needs_compiler
def test_conversion_with_compiled_neurons_gives_the_same_snn(tiny_resnet, images):
    """Bias calibration and ``auto`` run the neurons; compiled, they give the same file."""
    from convertsnn import convert

    batches = [(images[:16], torch.zeros(16)), (images[16:], torch.zeros(16))]
    snns = {
        runtime: convert(tiny_resnet, batches, timesteps=3, population=3,
                         calibration="auto:mse+biascal:percentile:99.9", runtime=runtime)
        for runtime in ("eager", "compiled")
    }  # fmt: skip
    assert snns["compiled"].runtime == "compiled" and snns["eager"].runtime == "eager"
    eager, fused = (snns[r].state_dict() for r in ("eager", "compiled"))
    assert eager.keys() == fused.keys()
    assert all(torch.equal(eager[k], fused[k]) for k in eager)
    assert snns["compiled"].metadata == snns["eager"].metadata
    with pytest.raises(ConvertSNNError, match="unknown runtime 'jit'; choose one of eager"):
        convert(tiny_resnet, [(images, None)], timesteps=3, calibration="max", runtime="jit")


def test_failed_compile_falls_back_to_the_eager_neuron(monkeypatch):
    (eager, fused), x, _ = _pair(*CASES[0])

    def broken(name):
        raise RuntimeError("no C++ compiler found\nlong traceback")

    monkeypatch.setattr(compiled, "_kernel", broken)
    monkeypatch.setattr(compiled, "_failure", None)
    with pytest.warns(RuntimeWarning, match=r"no C.. compiler found\); running the eager"):
        with torch.no_grad():
            out = fused(x)
    with torch.no_grad():
        assert torch.equal(out, eager(x))
    assert compiled._failure is not None


def test_evaluate_command_gives_the_same_numbers_with_either_runtime(tmp_path, mnist_sample):
    from convertsnn.importers import Preprocessing, save_ann
    from convertsnn.models import create_model
    from tests.cli_helpers import assert_one_line_error, run_cli

    torch.manual_seed(0)
    ann = save_ann(create_model("mnist_cnn", width=4), tmp_path / "ann.safetensors", "mnist_cnn",
                   {"width": 4}, Preprocessing((0.13,), (0.31,), (1, 28, 28), 10))  # fmt: skip
    snn = tmp_path / "snn.safetensors"
    result = run_cli("convert", ann, "--calib", mnist_sample, "--calib-images", 64, "-T", 4,
                     "--calibration", "max", "-o", snn)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {}
    for runtime in ("eager", "compiled"):
        out = tmp_path / f"{runtime}.json"
        result = run_cli("evaluate", snn, "--data", mnist_sample, "--limit", 32, "--attack",
                         "fgsm", "--eps", "0.1", "--runtime", runtime, "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        rows[runtime] = [(r["clean"], r["robust"]) for r in json.loads(out.read_text())["rows"]]
    assert rows["compiled"] == rows["eager"]
    out = tmp_path / "channels_last.json"
    result = run_cli("evaluate", snn, "--data", mnist_sample, "--limit", 32, "--attack", "fgsm",
                     "--eps", "0.1", "--runtime", "compiled", "--layout", "channels_last",
                     "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    layout_rows = [(r["clean"], r["robust"]) for r in json.loads(out.read_text())["rows"]]
    assert len(layout_rows) == len(rows["eager"])
    for (clean, robust), (clean_e, robust_e) in zip(layout_rows, rows["eager"], strict=True):
        assert abs(clean - clean_e) <= 1 / 32  # at most one image on the other side
        assert all(abs(robust[k] - robust_e[k]) <= 1 / 32 for k in robust_e)
    result = run_cli("evaluate", snn, "--data", mnist_sample, "--runtime", "jit")
    assert_one_line_error(result, "'jit' is not one of 'eager', 'compiled'")


def test_failed_backward_compile_finishes_with_the_same_gradient(monkeypatch):
    (eager, fused), x, weights = _pair(*CASES[1])

    def forward_only(name):
        if name == "backward":
            raise RuntimeError("inductor failed")
        return compiled._forward  # uncompiled: the same numbers

    monkeypatch.setattr(compiled, "_kernel", forward_only)
    monkeypatch.setattr(compiled, "_failure", None)
    grads = []
    for neuron in (eager, fused):
        xg = x.clone().requires_grad_(True)
        with (
            pytest.warns(RuntimeWarning, match="inductor failed")
            if neuron is fused
            else nullcontext()
        ):
            (neuron(xg) * weights).sum().backward()
        grads.append(xg.grad)
    assert torch.allclose(grads[1], grads[0], atol=1e-5)
    assert compiled._failure == "RuntimeError: inductor failed"
