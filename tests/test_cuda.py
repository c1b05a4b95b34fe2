"""The CUDA path end to end: convert, finetune, every attack and suite, certify, zoo, torchrun
with NCCL, and a run resumed across devices. Skipped without a CUDA GPU; run on a GPU machine
with ``python -m pytest -m cuda`` (benchmarks/gpu_check.sh does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from convertsnn import convert, load_snn
from convertsnn.attacks import ATTACKS, build_attack
from convertsnn.cli import main
from convertsnn.data import load_dataset
from convertsnn.finetune import finetune
from convertsnn.snn import compiled
from tests.cli_helpers import run_cli
from tests.conftest import ASSETS
from tests.finetune_helpers import separable_npz, tiny_ann, tiny_snn_file
from tests.test_compiled_runtime import both_runtimes
from tests.test_finetune_resume import KILLER, flags, settings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ROOT = Path(__file__).resolve().parents[1]
# Subprocesses import this checkout first, then whatever PYTHONPATH already offers.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def mnist() -> tuple[Path, Path]:
    """The shipped MNIST SNN (10 classes, T=8) and the shipped real MNIST sample."""
    return ROOT / "model_zoo" / "mnist_cnn_pgd_snn_t8.safetensors", ASSETS / "mnist_sample.npz"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cuda")
    data = separable_npz(root / "data.npz", n=40)
    return tiny_snn_file(root / "snn.safetensors", data, timesteps=4), data


def test_conversion_on_cuda_matches_the_cpu(files):
    _, data = files
    loader = DataLoader(load_dataset(str(data), "train"), batch_size=16)
    on_gpu = convert(tiny_ann(), loader, 4, calibration="percentile:99.9", device="cuda")
    on_cpu = convert(tiny_ann(), loader, 4, calibration="percentile:99.9", device="cpu")
    assert next(on_gpu.parameters()).device.type == "cuda"
    x, _ = next(iter(loader))
    with torch.no_grad():
        got, want = on_gpu(x.cuda()).cpu(), on_cpu(x)
    # GPU convolutions round differently (TF32 by default), so a spike may flip at a threshold
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9
    for name, theta in on_cpu.thresholds.items():
        torch.testing.assert_close(on_gpu.thresholds[name].cpu(), theta, rtol=0.02, atol=1e-4)


def test_layer_by_layer_calibrations_run_on_cuda(files):
    """Bias and weight calibration, the delayed readout: the methods that simulate the SNN."""
    _, data = files
    loader = DataLoader(load_dataset(str(data), "train"), batch_size=16)
    snn = convert(tiny_ann(), loader, 4, calibration="delay:wcal:biascal:mse", device="cuda")
    assert next(snn.parameters()).device.type == "cuda"
    assert snn.metadata["weight_calibration"] and snn.metadata["bias_corrections"]
    x, _ = next(iter(loader))
    with torch.no_grad():
        assert torch.isfinite(snn(x.cuda())).all()


def test_convert_command_on_cuda(files, tmp_path):
    _, data = files
    onnx = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_ann(), (torch.rand(1, 3, 6, 6),), str(onnx), dynamo=False)
    out = tmp_path / "snn.safetensors"
    result = run_cli("convert", onnx, "--calib", data, "-T", 4, "--device", "cuda", "-o", out)
    assert result.exit_code == 0, result.output
    assert load_snn(out).timesteps == 4


@pytest.mark.parametrize(
    ("population", "leak", "layout"),
    [(1, 1.0, "nchw"), (1, 0.9, "nchw"), (8, 1.0, "nchw"), (1, 1.0, "channels_last")],
)
def test_compiled_neurons_on_cuda_give_the_eager_spikes(population, leak, layout):
    """The default pipeline's runtime (``--runtime compiled``: Triton kernels on CUDA) against
    the eager neuron on the same GPU: the same outputs, gradients within float rounding."""
    torch.manual_seed(0)
    steps, batch = 8, 16
    x = torch.randn(steps * batch, 4, 6, 6, device="cuda") * 0.8
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    theta = torch.tensor([0.6, 1.1, 0.9, 0.7])
    (out_e, gx_e, gt_e), (out_c, gx_c, gt_c) = both_runtimes(
        x, torch.randn_like(x), steps, threshold=theta, leak=leak, population=population
    )
    assert (out_e > 0).any() and (out_e == 0).any()
    assert compiled._failure is None, compiled._failure  # Triton compiled it: no eager fallback
    assert torch.equal(out_c, out_e)
    torch.testing.assert_close(gx_c, gx_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gt_c, gt_e, atol=1e-3, rtol=1e-4)


def test_population_pipeline_on_cuda(files, tmp_path):
    """The default pipeline's conversion (populations, compiled neurons) and its suite on CUDA."""
    _, data = files
    onnx = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_ann(), (torch.rand(1, 3, 6, 6),), str(onnx), dynamo=False)
    out = tmp_path / "pop.safetensors"
    result = run_cli("convert", onnx, "--calib", data, "-T", 4,
                     "--population", 4, "--runtime", "compiled", "--device", "cuda",
                     "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = tmp_path / "r.json"
    result = run_cli("evaluate", out, "--data", data, "--suite", "quick", "--eps", "0.1",
                     "--limit", 8, "--runtime", "compiled", "--device", "cuda",
                     "--out", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert compiled._failure is None, compiled._failure


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_on_cuda(mnist, name):
    path, data = mnist
    snn = load_snn(path, "cuda").eval()
    x, y = next(iter(DataLoader(load_dataset(str(data), "test"), batch_size=8)))
    x, y = x.cuda(), y.cuda()
    params = {"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 5},
              "apgd-t": {"steps": 5, "targets": 3}, "square": {"queries": 50},
              "transfer": {"steps": 5, "source": snn}}.get(name, {})  # fmt: skip
    x_adv = build_attack(name, snn, 8 / 255, **params)(x, y)
    assert x_adv.device.type == "cuda"
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1


@pytest.mark.parametrize("mode", ["native", "bptt:sigmoid:4", "bptr", "ann", "adaptive"])
def test_gradient_modes_on_cuda(mnist, mode):
    path, data = mnist
    snn = load_snn(path, "cuda").eval()
    x, y = next(iter(DataLoader(load_dataset(str(data), "test"), batch_size=8)))
    x_adv = build_attack("pgd", snn, 8 / 255, steps=3, gradient_mode=mode)(x.cuda(), y.cuda())
    assert x_adv.device.type == "cuda" and torch.isfinite(x_adv).all()


@pytest.mark.parametrize("suite", ["quick", "standard", "full"])
def test_suites_on_cuda(mnist, suite, tmp_path):
    path, data = mnist
    out = tmp_path / "r.json"
    result = run_cli("evaluate", path, "--data", data, "--suite", suite, "--eps", "8/255",
                     "--limit", 8, "--device", "cuda", "--out", out,
                     "--report", tmp_path / "report")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(out.read_text())["rows"] if r["model"].startswith("SNN")]
    assert row["robust"] and all(0 <= v <= row["clean"] for v in row["robust"].values())


def test_autoattack_runs_on_cuda(mnist):
    """pyautoattack on the GPU SNN (T=2 and eps 0.3 keep it short: APGD-CE breaks most images,
    the later attacks run only on what survives)."""
    from convertsnn.eval.autoattack import run_autoattack
    from convertsnn.eval.settings import EvalSettings

    path, data = mnist
    snn = load_snn(path, "cuda").eval()
    snn.timesteps = 2
    x, y = next(iter(DataLoader(load_dataset(str(data), "test"), batch_size=4)))
    result = run_autoattack(snn, x.cuda(), y.cuda(), EvalSettings(0.3))
    assert result.correct.device.type == "cuda" and 0 <= result.robust <= 1


def test_finetune_on_cuda_writes_cpu_loadable_files(files, tmp_path):
    path, data = files
    result = finetune(model=str(path), data=str(data), out_dir=str(tmp_path / "run"),
                      objective="trades", eps=0.05, attack_steps=2, epochs=1, batch_size=8,
                      val_attack_steps=2, device="cuda", progress=False)  # fmt: skip
    assert len(result.history) == 1
    state = load_file(tmp_path / "run" / "last.safetensors")
    assert all(t.device.type == "cpu" for t in state.values())
    assert load_snn(tmp_path / "run" / "last.safetensors").timesteps == 4


def test_a_cuda_run_resumes_on_the_cpu_and_back(tmp_path):
    """Killed on the GPU, resumed on the CPU, killed again, finished on the GPU."""
    data = separable_npz(tmp_path / "data.npz", n=40)
    snn = tiny_snn_file(tmp_path / "snn.safetensors", data)
    run = tmp_path / "run"
    for device, kill_at in (("cuda", 4), ("cpu", 3)):
        values = {**settings(snn, data, run), "device": device, "resume": device == "cpu"}
        killed = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), "finetune",
                                 *flags(values)], env=ENV, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert (run / "checkpoint.pt").is_file()
    done = finetune(**{**settings(snn, data, run), "device": "cuda", "resume": True})
    assert len(done.history) == 2
    steps = [json.loads(line)["global_step"] for line in (run / "log.jsonl").open()]
    assert sorted(set(steps)) == list(range(1, 9))


def test_certify_on_cuda(files, tmp_path):
    path, data = files
    result = run_cli("certify", path, "--data", data, "--sigma", "0.1", "--n0", 10, "--n", 50,
                     "--limit", 4, "--device", "cuda", "--out", tmp_path / "c.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "c.json").read_text())["certificates"]) == 4


def test_zoo_model_on_cuda_reproduces_its_recorded_accuracy(tmp_path):
    from convertsnn import zoo

    index = ROOT / "model_zoo" / "index.yaml"
    entry = zoo.model_info("mnist_cnn_pgd_snn_t8", index=index)
    recorded = next(m for m in entry.metrics if "mnist_sample.npz" in m.data).values["clean"]
    out = tmp_path / "clean.json"
    args = ["evaluate", "zoo:mnist_cnn_pgd_snn_t8", "--data", str(ASSETS / "mnist_sample.npz"),
            "--no-ann", "--device", "cuda", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"CONVERTSNN_ZOO_INDEX": str(index)})
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert abs(row["clean"] - recorded) <= 0.005, (row["clean"], recorded)


def test_torchrun_one_process_uses_nccl(files, tmp_path):
    path, data = files
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
         "-m", "convertsnn", "finetune", str(path), "--data", str(data), "--objective", "pgd-at",
         "--eps", "0.05", "--attack-steps", "2", "--epochs", "1", "--batch-size", "8",
         "--val-attack-steps", "2", "--device", "cuda", "--no-progress",
         "--out-dir", str(tmp_path / "ddp")],
        env={**ENV, "NCCL_DEBUG": "INFO"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = launched.stdout + launched.stderr
    assert launched.returncode == 0, output[-3000:]
    assert "NCCL INFO" in output and "finetuned " in launched.stdout
    assert (tmp_path / "ddp" / "last.safetensors").is_file()
