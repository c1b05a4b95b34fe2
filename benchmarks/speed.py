"""Speed of the spiking runtime: SNN against its own ANN, per T and batch size, in one process.

The network is the shared CIFAR-10 ResNet-20 (../shared/models), converted with
--calibration on the first lossless training images. Its ANN is the same network in ``ann``
gradient mode (BatchNorm folded, ReLU, one step), so a ratio isolates the cost of the spiking
dynamics: the dense limit of an SNN at T steps is T times its ANN. Three workloads:

- ``forward``: logits without gradients (evaluation);
- ``bptt``: a training step (forward, cross-entropy, backward through time, SGD update);
- ``input_grad``: the gradient of the loss with respect to the input only (one attack step).

Every round times each workload of every (T, batch) once for the ANN and once for the SNN,
interleaved, so slow phases of a shared machine hit both; the report gives the median and the
min-max of the per-round ratios and the median absolute times. On CUDA every timing waits for
the GPU (``torch.cuda.synchronize``).

    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --timesteps 1,2,4,8,16,32 \
        --batch 16,64
    python benchmarks/speed.py --device cuda --timesteps 4,8,16 --batch 256

Writes --out .json and .md (default benchmarks/results/speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from convertsnn import convert
from convertsnn.data import load_dataset
from convertsnn.eval.report import write_json
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import atomic_write, package_versions

ROOT = Path(__file__).resolve().parents[1]
RESNET20 = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 32, 32), 10)
WORKLOADS = ("forward", "bptt", "input_grad")


def workload(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One call of ``name`` on ``model`` (see the module docstring)."""
    if name == "forward":

        def run() -> None:
            with torch.no_grad():
                model(x)

    elif name == "bptt":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as is

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    else:

        def run() -> None:
            x_adv = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)

    return run


def seconds(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Mean wall time of ``run`` over ``repeats`` calls (after the GPU has finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


class AsANN(nn.Module):
    """The SNN's network as its ANN: ``ann`` gradient mode (ReLU, BN folded, one step)."""

    def __init__(self, snn: SpikingNetwork) -> None:
        super().__init__()
        self.snn = snn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.snn.gradient("ann"):
            return self.snn(x)


def build_snn(args) -> SpikingNetwork:
    ann = load_ann(str(args.models_dir / "resnet20-12fca82f.th"), arch="resnet20",
                   preprocessing=RESNET20).model  # fmt: skip
    calib = load_dataset(str(args.data_dir / args.data), "train", limit=args.calib_images)
    return convert(ann, DataLoader(calib, batch_size=64), 8, args.calibration).eval()


def inputs(args, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` real test images (repeated if needed) or uniform noise, with their labels."""
    test = load_dataset(str(args.data_dir / args.data), "test", limit=batch)
    x, y = next(iter(DataLoader(test, batch_size=len(test))))
    repeat = -(-batch // len(x))
    x, y = x.repeat(repeat, 1, 1, 1)[:batch], y.repeat(repeat)[:batch]
    if args.inputs == "random":
        x = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    return x.to(device), y.to(device)


def measure(args) -> dict:
    device = torch.device(args.device)
    snn = build_snn(args).to(device)
    ann = AsANN(snn)
    cases = [(t, b) for t in args.timesteps for b in args.batch]
    data = {b: inputs(args, b, device) for b in args.batch}
    times: dict[tuple, list[float]] = {}
    for round_index in range(args.rounds + 1):  # round 0 warms up (allocator, cuDNN choice)
        for t, b in cases:
            snn.timesteps = t
            for name in WORKLOADS:
                for side, model in (("ann", ann), ("snn", snn)):
                    run = workload(name, model, *data[b])
                    taken = seconds(run, device, args.repeats)
                    if round_index:
                        times.setdefault((t, b, name, side), []).append(taken)
    rows = []
    for t, b in cases:
        for name in WORKLOADS:
            ann_times, snn_times = times[(t, b, name, "ann")], times[(t, b, name, "snn")]
            ratios = [s / a for s, a in zip(snn_times, ann_times, strict=True)]
            rows.append({
                "T": t, "batch": b, "workload": name,
                "ann_ms": 1000 * statistics.median(ann_times),
                "snn_ms": 1000 * statistics.median(snn_times),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
            })  # fmt: skip
    return {"rows": rows, "device_name": device_name(device)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} thread(s)"


def markdown(result: dict) -> str:
    lines = [
        "# Spiking runtime speed",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device_name']}. Model: ResNet-20 (shared akamaster checkpoint) "
        f"converted with `{result['config']['calibration']}`; ANN = the same network in `ann` "
        f"mode (BN folded, one step); inputs: {result['config']['inputs']} CIFAR-10 images of "
        f"`{result['config']['data']}`. {result['config']['rounds']} interleaved rounds after a "
        f"warm-up round, {result['config']['repeats']} calls per timing. Ratio = SNN time / "
        "ANN time (median [min-max] over rounds); the dense limit is T.",
        "",
        "| T | batch | workload | ANN ms | SNN ms | SNN / ANN | SNN / (T x ANN) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['T']} | {r['batch']} | {r['workload']} | {r['ann_ms']:.2f} | "
            f"{r['snn_ms']:.2f} | {r['ratio_median']:.2f} [{r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}] | {r['ratio_median'] / r['T']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--data", default="cifar10_lossless_subset.npz")
    parser.add_argument("--calibration", default="percentile:99.99")
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--timesteps", default="1,2,4,8,16,32")
    parser.add_argument("--batch", default="16,64")
    parser.add_argument("--inputs", choices=("real", "random"), default="real")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed")
    args = parser.parse_args()
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    args.batch = [int(b) for b in args.batch.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir",
                                                                       "models_dir")},
        "versions": package_versions(),
        **measure(args),
    }  # fmt: skip
    write_json(args.out.with_suffix(".json"), result)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(result)))
    print(markdown(result))


if __name__ == "__main__":
    main()
