"""Conversion time with eager against compiled neurons, and whether both give the same SNN.

Calibration methods that run the SNN (bias calibration, the delayed readout, ``auto``'s scoring)
spend their time in the neurons; ``convert(..., runtime="compiled")`` runs them as compiled
kernels (a population's K members in one kernel that reads each input once; the forward is
bit-identical to the eager neuron, so the converted file must be too). For each model in
--models and each ``K:T`` in --settings the script converts the shared CIFAR-10 ANN with
--calibration on the first --calib-images lossless training images, once per runtime (compiled
first, so its time includes compiling, with whatever TorchInductor has cached on disk), and
records wall and CPU seconds (``time.process_time``: this process's threads; the C++ compiler
runs in other processes) and a hash of the SNN's state.

    OMP_NUM_THREADS=1 python benchmarks/conversion_runtime.py --data-dir ../shared/data \\
        --models-dir ../shared/models --models resnet20,resnet56 --settings 4:8,1:8

Writes benchmarks/results/conversion_runtime.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path

import torch
from fidelity_deep import LOSSLESS, MODELS
from torch.utils.data import DataLoader

from convertsnn.convert import convert
from convertsnn.data import load_dataset
from convertsnn.eval.report import format_table, write_json
from convertsnn.importers import load_ann
from convertsnn.snn.serialize import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def state_hash(snn: torch.nn.Module) -> str:
    """sha256 of every tensor of ``snn``'s state, in name order (the first 16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(snn.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run(args) -> dict:
    calib = DataLoader(
        load_dataset(str(args.data_dir / LOSSLESS), "train", limit=args.calib_images),
        batch_size=64,
    )
    rows = []
    for name in args.models.split(","):
        file, preprocessing = MODELS[name]
        ann = load_ann(str(args.models_dir / file), arch=name, preprocessing=preprocessing).model
        for setting in args.settings.split(","):
            population, timesteps = (int(v) for v in setting.split(":"))
            row = {"model": name, "population": population, "timesteps": timesteps}
            for runtime in ("compiled", "eager"):
                wall, cpu = time.perf_counter(), time.process_time()
                snn = convert(ann.eval(), calib, timesteps, args.calibration,
                              population=population, runtime=runtime,
                              metadata={"input_size": list(preprocessing.input_size)})  # fmt: skip
                row[runtime] = {
                    "wall_seconds": time.perf_counter() - wall,
                    "cpu_seconds": time.process_time() - cpu,
                    "state": state_hash(snn),
                    "chosen": snn.metadata.get("auto_calibration", {}).get("chosen"),
                }
            row["same_snn"] = row["compiled"]["state"] == row["eager"]["state"]
            print(row, flush=True)
            rows.append(row)
    return {
        "command": shlex.join(["python", *sys.argv]),
        "calibration": args.calibration,
        "calib_images": args.calib_images,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    header = ["model", "K", "T", "compiled wall s", "eager wall s", "eager / compiled",
              "compiled CPU s", "eager CPU s", "same SNN", "chosen"]  # fmt: skip
    table = [
        [r["model"], str(r["population"]), str(r["timesteps"]),
         f"{r['compiled']['wall_seconds']:.1f}", f"{r['eager']['wall_seconds']:.1f}",
         f"{r['eager']['wall_seconds'] / r['compiled']['wall_seconds']:.2f}",
         f"{r['compiled']['cpu_seconds']:.1f}", f"{r['eager']['cpu_seconds']:.1f}",
         "yes" if r["same_snn"] else "NO",
         f"`{r['eager']['chosen']}`" if r["eager"]["chosen"] else "-"]
        for r in result["rows"]
    ]  # fmt: skip
    return "\n".join([
        "# Conversion time: eager against compiled neurons",
        "",
        f"Command: `{result['command']}`",
        "",
        f"`convert(ann, loader, T, {result['calibration']!r}, population=K, runtime=...)` on the "
        f"first {result['calib_images']} lossless CIFAR-10 training images, {result['threads']} "
        "thread(s); compiled first (its time includes compiling). Same SNN: the two runs' "
        "states hash alike. K = 1 is one neuron per unit.",
        "",
        format_table(header, table, markdown=True),
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--settings", default="4:8", help="population:T pairs, comma separated")
    parser.add_argument("--calibration", default="auto")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/conversion_runtime")
    args = parser.parse_args()
    result = run(args)
    write_json(args.out.with_suffix(".json"), result)
    text = markdown(result)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
