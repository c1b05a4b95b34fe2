"""Scale out: `torchrun --nproc_per_node 2 -m convertsnn finetune` (DDP, gloo on CPU) gives the
same model as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from convertsnn.finetune import finetune
from convertsnn.snn.serialize import load_snn
from tests.finetune_helpers import separable_npz, tiny_snn_file


def test_two_gloo_processes_match_one_process(tmp_path):
    data = separable_npz(tmp_path / "data.npz", n=40)
    snn = tiny_snn_file(tmp_path / "snn.safetensors", data)
    # The inner attack starts at x (no random draw), so both runs see the same x_adv; the data
    # order is the DistributedSampler's in both. 30 training images, global batch 8. The quick
    # suite selects the best epoch on the 10 held-out images, split over the ranks.
    settings = dict(objective="pgd-at", random_start=False, eps=0.05, attack_steps=2, epochs=2,
                    batch_size=8, val_fraction=0.25, val_attack_steps=2, lr=0.05, seed=1,
                    select_by="quick", select_images=10, device="cpu", progress=False)  # fmt: skip
    single = finetune(model=str(snn), data=str(data), out_dir=str(tmp_path / "one"), **settings)

    flags = ["--no-random-start", "--no-progress"]
    for key in ("objective", "eps", "attack_steps", "epochs", "batch_size", "val_fraction",
                "val_attack_steps", "lr", "seed", "select_by", "select_images", "device"):  # fmt: skip
        flags += ["--" + key.replace("_", "-"), str(settings[key])]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip

    def launch(out_dir: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", "-m", "convertsnn", "finetune", str(snn), "--data", str(data),
             "--out-dir", str(out_dir), *flags],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    two_dir = tmp_path / "two"
    launched = launch(two_dir)
    # One rank died by SIGABRT with no Python traceback once in about ten runs on the 2-core CI
    # machine (consistent with gloo aborting on a TCP peer that closed first, as reported for
    # pytorch and horovod; not diagnosed further here): one more launch, from scratch.
    if "Signal 6 (SIGABRT)" in launched.stderr:
        two_dir = tmp_path / "two_again"
        launched = launch(two_dir)
    errors = [line for line in launched.stderr.splitlines() if "Error" in line or "error" in line]
    assert launched.returncode == 0, "\n".join(errors[:20]) + launched.stderr[-1500:]
    assert launched.stdout.count("finetuned ") == 1  # only rank 0 reports

    one, two = (
        load_file(tmp_path / "one" / "last.safetensors"),
        load_file(two_dir / "last.safetensors"),
    )
    original = load_file(snn)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.equal(one[k], original[k]) for k in one)  # training did change it

    history = load_snn(two_dir / "last.safetensors").metadata["finetune"]["history"]
    assert len(history) == len(single.history) == 2
    for got, want in zip(history, single.history, strict=True):
        assert (
            got["train_loss"] == want["train_loss"]
            or abs(got["train_loss"] - want["train_loss"]) < 1e-4
        )
        assert got["train_clean_acc"] == want["train_clean_acc"]
        assert got["val_clean_acc"] == want["val_clean_acc"]  # sharded held-out set, summed
        assert round(got["val_quick_acc"] * 10, 6) % 1 == 0  # a count of 10 images, summed
        assert got["val_quick_acc"] <= got["val_clean_acc"]


def test_one_process_under_torchrun_starts_a_process_group(monkeypatch):
    """`torchrun --nproc_per_node 1` takes the process-group path (NCCL on a GPU, here gloo)."""
    import socket

    import torch.distributed as dist

    from convertsnn.finetune.distributed import distributed_context

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    with distributed_context("cpu") as ctx:
        assert ctx.distributed and dist.get_backend() == "gloo"
        assert ctx.sum([1.5, 2.0]) == [1.5, 2.0] and ctx.gather("x") == ["x"]
        assert isinstance(
            ctx.wrap(torch.nn.Linear(2, 2)), torch.nn.parallel.DistributedDataParallel
        )
    assert not dist.is_initialized()
