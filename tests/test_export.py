"""ONNX and NIR export, NIR import, and the Sinabs round trip, on tiny models and real MNIST."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from torch import nn

from convertsnn import convert, load_snn, save_snn
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.export.consumers import compare, graph_reference
from convertsnn.export.nir import export_nir, to_nir
from convertsnn.export.nir_import import from_nir, read_nir
from convertsnn.export.onnx import export_onnx, onnx_logits
from convertsnn.zoo import resolve_model_file
from tests.cli_helpers import assert_one_line_error, run_cli


@pytest.fixture
def snn(tiny_resnet, images):
    """Residual block, global average pooling, per-layer thresholds (max calibration)."""
    model = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max")
    model.metadata["input_size"] = [3, 12, 12]
    return model


@pytest.fixture
def mnist_snn():
    return load_snn(resolve_model_file("zoo:mnist_cnn_pgd_snn_t8"))


@pytest.fixture
def mnist_images(mnist_sample):
    return load_dataset(str(mnist_sample), split="test", limit=16).tensors()[0]


def _pool_net(pool: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).eval()


@pytest.mark.parametrize("neuron", [{}, {"neuron": "lif", "leak": 0.9, "reset": "zero"}])
def test_onnx_matches_convertsnn(snn, tiny_resnet, images, tmp_path, neuron):
    if neuron:
        snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max", **neuron)
        snn.metadata["input_size"] = [3, 12, 12]
    path = export_onnx(snn, tmp_path / "m.onnx")
    with torch.no_grad():
        reference = snn(images)
    assert (onnx_logits(path, images, batch_size=7) - reference).abs().max() <= 1e-4


def test_onnx_of_the_shipped_mnist_snn_on_real_images(mnist_snn, mnist_images, tmp_path):
    path = export_onnx(mnist_snn, tmp_path / "m.onnx", timesteps=4)
    mnist_snn.timesteps = 4
    with torch.no_grad():
        reference = mnist_snn(mnist_images)
    assert (onnx_logits(path, mnist_images) - reference).abs().max() <= 1e-4


def test_onnx_spiking_max_pool_matches(images, tmp_path):
    snn = convert(_pool_net(nn.MaxPool2d(2)), [(images, None)], timesteps=4, calibration="max")
    snn.metadata["input_size"] = [3, 12, 12]
    path = export_onnx(snn, tmp_path / "m.onnx")
    with torch.no_grad():
        assert (onnx_logits(path, images) - snn(images)).abs().max() <= 1e-4


def test_dlif_exports_to_onnx_and_is_refused_by_nir(snn, images, tmp_path):
    from convertsnn.snn.dlif import to_dlif

    to_dlif(snn)
    with torch.no_grad():
        snn.body.get_submodule("act_relu_1").gain.data = torch.tensor([1.5, 0.5, 1.0, 2.0])
        reference = snn(images)
    path = export_onnx(snn, tmp_path / "m.onnx")
    assert (onnx_logits(path, images) - reference).abs().max() <= 1e-4
    with pytest.raises(ConvertSNNError, match="layer 'act_relu' to NIR: DLIF input gains"):
        to_nir(snn)


def test_onnx_refuses_stochastic_coding(snn, tmp_path):
    snn.encoder = __import__("convertsnn.snn.encoding", fromlist=["x"]).parse_encoder("poisson")
    with pytest.raises(ConvertSNNError, match="with the poisson encoder, which the ONNX export"):
        export_onnx(snn, tmp_path / "m.onnx")


def test_nir_round_trip_through_convertsnn_is_exact(snn, images, tmp_path):
    path, notes = export_nir(snn, tmp_path / "m.nir", v_init="drop")
    assert any("v_init=[0.5] x threshold dropped" in note for note in notes)
    back = read_nir(path)
    save_snn(back, tmp_path / "back.safetensors")
    back = load_snn(tmp_path / "back.safetensors")
    assert back.timesteps == snn.timesteps
    with torch.no_grad():
        assert torch.allclose(back(images), snn(images), atol=1e-5)


def test_nir_graph_has_binary_neurons_and_folded_thresholds(snn):
    graph, _ = to_nir(snn)
    kinds = {type(node).__name__ for node in graph.nodes.values()}
    assert kinds <= {"Input", "Output", "Conv2d", "Affine", "SumPool2d", "Flatten", "IF"}
    first = graph.nodes[next(d for s, d in graph.edges if s == "input")]
    assert isinstance(first, nir.Conv2d)  # the normalisation
    np.testing.assert_allclose(np.diag(first.weight[:, :, 0, 0]), 4.0)  # 1 / std
    assert graph.metadata["convertsnn.reset"] == "subtract"


def test_nir_v_init_spread_over_the_steps_as_bias(snn):
    dropped, _ = to_nir(snn, v_init="drop")
    folded, notes = to_nir(snn, v_init="bias")
    assert any("folded into the biases" in note for note in notes)
    assert folded.metadata["convertsnn.v_init"] == "0.0"
    theta = float(snn.body.get_submodule("act_relu").threshold)  # first neuron, fed by conv1
    feeding = next(s for s, d in folded.edges if d == "act_relu")
    added = folded.nodes[feeding].bias - dropped.nodes[feeding].bias
    np.testing.assert_allclose(added, 0.5 * theta / snn.timesteps, rtol=1e-5)


def test_nir_lif_zero_reset_round_trip(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max", neuron="lif",
                  leak=0.8, reset="zero", v_init=0.0)  # fmt: skip
    snn.metadata["input_size"] = [3, 12, 12]
    graph, notes = to_nir(snn)
    assert not notes and any(isinstance(n, nir.LIF) for n in graph.nodes.values())
    with torch.no_grad():
        assert torch.allclose(from_nir(graph)(images), snn(images), atol=1e-5)


@pytest.mark.parametrize("model", ["tiny", "mnist"])
def test_sinabs_runs_the_exported_graph_like_convertsnn(model, snn, images, mnist_snn,
                                                        mnist_images):  # fmt: skip
    pytest.importorskip("sinabs")
    from convertsnn.export.consumers import run_sinabs

    if model == "mnist":
        snn, images = mnist_snn, mnist_images
    graph, _ = to_nir(snn)
    result = compare(graph_reference(graph, images), run_sinabs(graph, images, snn.timesteps))
    assert result["max_abs_logit_diff"] <= 1e-4
    assert result["max_rel_spike_count_diff"] == 0
    assert all(layer["convertsnn"] > 0 for layer in result["layers"].values())


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_import_of_a_graph_written_by_sinabs(reset):
    sinabs = pytest.importorskip("sinabs")
    import sinabs.activation as sa
    import sinabs.layers as sl
    from sinabs.nir import to_nir as sinabs_to_nir

    torch.manual_seed(0)
    steps, batch = 6, 4
    reset_fn = sa.MembraneReset() if reset == "zero" else sa.MembraneSubtract()
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        sl.IAFSqueeze(batch_size=batch, min_v_mem=None, spike_fn=sa.SingleSpike, reset_fn=reset_fn),
        sl.SumPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    ).eval()  # fmt: skip
    images = torch.rand(batch, 2, 8, 8) * 2
    sequence = images.unsqueeze(1).expand(batch, steps, 2, 8, 8).flatten(0, 1)
    graph = sinabs_to_nir(model, sequence)
    sinabs.reset_states(model)
    with torch.no_grad():
        expected = model(sequence).view(batch, steps, -1).mean(1)
        snn = from_nir(graph, steps, reset=None if reset == "zero" else "subtract")
        assert torch.allclose(snn(images), expected, atol=1e-5)


def test_nir_refuses_spiking_max_pool_naming_the_layer(images, tmp_path):
    snn = convert(_pool_net(nn.MaxPool2d(2)), [(images, None)], timesteps=4, calibration="max")
    snn.metadata["input_size"] = [3, 12, 12]
    save_snn(snn, tmp_path / "m.safetensors")
    result = run_cli("export", tmp_path / "m.safetensors", "--format", "nir", "-o",
                     tmp_path / "m.nir")  # fmt: skip
    assert_one_line_error(result, "cannot export layer '_2' to NIR: SpikingMaxPool2d")
    assert not (tmp_path / "m.nir").exists()


def test_import_refuses_unsupported_nodes_naming_them(tmp_path):
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([4])}),
            "syn": nir.CubaLIF(
                tau_syn=np.ones(4),
                tau_mem=np.ones(4),
                r=np.ones(4),
                v_leak=np.zeros(4),
                v_threshold=np.ones(4),
            ),
            "output": nir.Output(output_type={"output": np.array([4])}),
        },
        edges=[("input", "syn"), ("syn", "output")],
    )
    nir.write(tmp_path / "other.nir", graph)
    result = run_cli("import", tmp_path / "other.nir", "-o", tmp_path / "m.safetensors",
                     "-T", "4")  # fmt: skip
    assert_one_line_error(result, "NIR node 'syn' of type CubaLIF is not supported")
    result = run_cli("import", tmp_path / "missing.nir", "-o", tmp_path / "m.safetensors")
    assert_one_line_error(result, "NIR file not found")


def test_cli_export_checks_onnx_and_nir_on_real_images(tmp_path, mnist_sample):
    onnx = run_cli("export", "zoo:mnist_cnn_pgd_snn_t8", "--format", "onnx", "-o",
                   tmp_path / "m.onnx", "-T", "2", "--check", mnist_sample,
                   "--check-images", "8")  # fmt: skip
    assert onnx.exit_code == 0, onnx.output
    assert "onnxruntime vs convertsnn on 8 images: max |logit diff|" in onnx.output
    assert "100.0% of images within 0.0001" in onnx.output
    exported = run_cli("export", "zoo:mnist_cnn_pgd_snn_t8", "--format", "nir", "-o",
                       tmp_path / "m.nir", "--check", mnist_sample, "--check-images", "8")  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert "read back by convertsnn vs the model on 8 images" in exported.output
    assert "Sinabs vs convertsnn running the NIR graph: max |logit diff|" in exported.output
    imported = run_cli("import", tmp_path / "m.nir", "-o", tmp_path / "back.safetensors")
    assert imported.exit_code == 0, imported.output
    assert "3 spiking layers, T=8" in imported.output


def test_cli_export_refuses_data_of_the_wrong_shape(tmp_path):
    from tests.conftest import write_npz

    data = write_npz(tmp_path / "d.npz", shape=(8, 8, 3))
    result = run_cli("export", "zoo:mnist_cnn_pgd_snn_t8", "--format", "onnx", "-o",
                     tmp_path / "m.onnx", "--check", data)  # fmt: skip
    assert_one_line_error(result, "but the model expects (1, 28, 28)")
    assert not (tmp_path / "m.onnx").exists()
