"""No work lost: a finetuning run killed with SIGKILL and resumed ends exactly where an
uninterrupted run with the same seed ends (same weights, same history, same log)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from convertsnn.finetune import finetune
from tests.finetune_helpers import separable_npz, tiny_snn_file

# Runs the CLI, but SIGKILLs itself when the objective is called for the KILL_AT-th time, i.e.
# at the start of that training step (no cleanup, no flush: like a pre-empted job).
KILLER = """
import os, signal, sys
from convertsnn.objectives.base import Objective
calls, original = 0, Objective.__call__
def call(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
Objective.__call__ = call
from convertsnn.cli import main
main(sys.argv[2:])
"""


def settings(snn: Path, data: Path, out_dir: Path) -> dict:
    # 40 images, 10 held out, batch 8: 4 steps per epoch, 2 epochs; checkpoints at steps
    # 2 (mid-epoch), 4 (epoch end), 6 (mid-epoch) and 8. Augmentation, the random start of
    # the inner attack and the held-out PGD all draw random numbers.
    return dict(model=str(snn), data=str(data), out_dir=str(out_dir), objective="trades",
                eps=0.05, attack_steps=2, epochs=2, batch_size=8, val_fraction=0.25,
                val_attack_steps=2, augment="crop-flip", lr=0.05, seed=3, checkpoint_every=2,
                log_every=1, device="cpu", progress=False)  # fmt: skip


def flags(values: dict) -> list[str]:
    out = [values["model"]]
    for key, value in values.items():
        if key == "model":
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag if value else "--no-" + key.replace("_", "-")] if isinstance(value, bool) \
            else [flag, str(value)]  # fmt: skip
    return out


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = separable_npz(tmp_path / "data.npz", n=40)
    snn = tiny_snn_file(tmp_path / "snn.safetensors", data)
    reference = finetune(**settings(snn, data, tmp_path / "reference"))

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "8", "finetune", *flags(settings(snn, data, interrupted))],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (interrupted / "checkpoint.pt").is_file()
    progress = torch.load(interrupted / "checkpoint.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (1, 2, 6)
    steps_logged = [json.loads(x)["global_step"] for x in (interrupted / "log.jsonl").open()]
    assert max(steps_logged) == 7  # step 7 ran and was logged after the last checkpoint

    resumed = finetune(**{**settings(snn, data, interrupted), "resume": True})

    for name in ("last.safetensors", "best.safetensors"):
        ref, got = load_file(tmp_path / "reference" / name), load_file(interrupted / name)
        assert ref.keys() == got.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6, msg=key)
    assert resumed.best_epoch == reference.best_epoch

    def without_time(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert without_time(resumed.history) == without_time(reference.history)
    logs = [
        without_time(json.loads(line) for line in (run / "log.jsonl").open())
        for run in (tmp_path / "reference", interrupted)
    ]
    assert logs[0] == logs[1]
