"""Local threshold balancing (``ltb``) and the delayed readout (``delay:BASE``, the SNN file's
``readout`` setting) after Bu, Li and Yu (CVPR 2025), on tiny models (issue 17)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from convertsnn.convert import convert, prepare_ann
from convertsnn.convert.calibration import get_calibration
from convertsnn.errors import ConvertSNNError
from convertsnn.export.nir import to_nir
from convertsnn.export.onnx import export_onnx, onnx_logits
from convertsnn.snn.serialize import load_snn, read_document, save_snn
from tests.test_calibration import loader, small_cnn, trained_batchnorm
from tests.test_deep_conversion import residual_net


@pytest.fixture
def data() -> torch.Tensor:
    return torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_ltb_takes_the_papers_steps_per_channel(data):
    model = trained_batchnorm(small_cnn(), data)
    batches = loader(data, batch=16)  # 4 batches, cycled to 6 steps
    snn = convert(model, batches, calibration="ltb:iterations=6")
    first, second = snn.thresholds.values()
    assert first.shape == (8,) and second.shape == (8,)
    # the first layer sees no clipped input: replay its 6 steps by hand
    gm = prepare_ann(model)
    stem = torch.nn.Sequential(*[gm.get_submodule(n) for n in ("0", "2")])  # BN folded
    theta = torch.zeros(8)
    for x, _ in (batches * 2)[:6]:
        with torch.no_grad():
            a = stem(x)
        theta = theta + 2 * (a - theta.view(-1, 1, 1)).clamp(min=0).mean((0, 2, 3))
    assert torch.allclose(first, theta, rtol=1e-5)
    # below the largest activation, and growing towards it with more steps
    with torch.no_grad():
        channel_max = stem(data).amax((0, 2, 3))
    assert (first < channel_max).all()
    longer, _ = convert(model, batches, calibration="ltb:iterations=40").thresholds.values()
    assert (longer >= first - 1e-6).all()
    assert str(get_calibration("ltb")) == "ltb:iterations=200,scale=1"
    with pytest.raises(ConvertSNNError, match="ltb needs iterations >= 1"):
        get_calibration("ltb:iterations=0")


def test_ltb_composes_and_converges_to_the_ann(data):
    model = trained_batchnorm(residual_net(blocks=1), data)
    snn = convert(model, loader(data), timesteps=64, calibration="biascal:ltb")
    assert "bias_corrections" in snn.metadata
    assert all(theta.dim() == 1 for theta in snn.thresholds.values())
    with torch.no_grad():
        agree = (snn(data).argmax(1) == model(data).argmax(1)).float().mean()
    assert agree > 0.8


def test_delay_chooses_the_readout_that_agrees_most_and_stores_it(data, tmp_path):
    model = trained_batchnorm(residual_net(blocks=2), data)
    snn = convert(model, loader(data), timesteps=6, calibration="delay:mse")
    record = snn.metadata["readout_delay"]
    scores = record["agreement_with_ann"]
    assert list(scores) == [str(d) for d in range(6)] and record["images"] == 64
    best = max(scores.values())
    assert record["chosen"] == min(int(d) for d, s in scores.items() if s == best)
    assert snn.readout == ("mean" if record["chosen"] == 0 else f"delay:{record['chosen']}")
    # the readout is the mean over steps D..T-1, and travels with the file
    snn.readout = "delay:2"
    with torch.no_grad():
        sequence = snn.forward_sequence(data)
        assert torch.allclose(snn(data), sequence[2:].mean(0))
        assert not torch.allclose(snn(data), sequence.mean(0))
        with snn.gradient("ann"):  # the ANN proxy runs one step and ignores the delay
            assert torch.allclose(snn(data), model(data), atol=1e-4)
    path = save_snn(snn, tmp_path / "delay.safetensors")
    document, _ = read_document(path)
    assert document["readout"] == "delay:2" and document["version"] == 2
    loaded = load_snn(path)
    assert loaded.readout == "delay:2"
    with torch.no_grad():
        assert torch.equal(loaded(data), snn(data))
    snn.timesteps = 2
    with pytest.raises(ConvertSNNError, match="skips the first 2 steps"):
        snn(data)
    with pytest.raises(ConvertSNNError, match="unknown readout 'delay:x'"):
        snn.readout = "delay:x"


def test_files_without_a_readout_read_out_the_mean(data, tmp_path):
    model = trained_batchnorm(small_cnn(), data)
    snn = convert(model, loader(data), timesteps=4, calibration="max")
    path = save_snn(snn, tmp_path / "new.safetensors")
    document, tensors = read_document(path)
    assert document["version"] == 1 and document["readout"] == "mean"
    del document["readout"]  # as written before the setting existed
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"convertsnn": json.dumps(document)})
    loaded = load_snn(old)
    assert loaded.readout == "mean"
    with torch.no_grad():
        assert torch.equal(loaded(data), loaded.forward_sequence(data).mean(0))
        assert torch.equal(loaded(data), snn(data))


def test_delayed_readout_exports_to_onnx_and_is_refused_by_nir(data, tmp_path):
    model = trained_batchnorm(residual_net(blocks=1), data)
    snn = convert(model, loader(data), timesteps=4, calibration="max")
    snn.metadata["input_size"] = [3, 8, 8]
    snn.readout = "delay:1"
    path = export_onnx(snn, tmp_path / "m.onnx")
    with torch.no_grad():
        assert (onnx_logits(path, data[:8]) - snn(data[:8])).abs().max() <= 1e-4
    with pytest.raises(ConvertSNNError, match="unroll more than 1 steps"):
        export_onnx(snn, tmp_path / "short.onnx", timesteps=1)
    with pytest.raises(ConvertSNNError) as err:
        to_nir(snn)
    assert "delay:1" in str(err.value) and "\n" not in str(err.value)


def test_auto_keeps_the_readout_of_its_choice(data):
    model = trained_batchnorm(residual_net(blocks=1), data)
    snn = convert(model, loader(data), timesteps=4, calibration="auto:delay:max+delay:mse")
    chosen = snn.metadata["auto_calibration"]["chosen"]
    assert chosen.startswith("delay:")
    delay = snn.metadata["readout_delay"]["chosen"]
    assert snn.readout == ("mean" if delay == 0 else f"delay:{delay}")
