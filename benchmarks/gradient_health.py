"""Optimisation health of BPTT through a converted SNN: parameter and input gradient sizes per
gradient mode, next to the same network as an ANN.

A converted neuron emits ``theta * spike``, with calibrated thresholds of 3-16 on ResNet-20.
A surrogate of fixed width on ``u - theta`` then multiplies the gradient by up to ``theta / g``
at every layer, so BPTT gradients grow with depth; on ``(u - theta) / theta`` (the default scale
since evaluation v2, and what finetuning always used) a layer's gain stays at most 1.

To compare modes on equal terms every backward pass starts from the same gradient at the
logits (a fixed random vector, not a loss, whose gradient would depend on how accurate each
model is). Reported per mode: L1 norms of the weight, threshold and input gradients, and the
relative step size ``|grad| / |param|`` (L1 over L1) of weights and thresholds, which says how
evenly one learning rate treats the two groups.

    OMP_NUM_THREADS=2 python benchmarks/gradient_health.py

Writes --out .json and .md (default benchmarks/results/gradient_health).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convertsnn import convert
from convertsnn.data import load_dataset
from convertsnn.eval.report import write_json
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.serialize import atomic_write, package_versions

ROOT = Path(__file__).resolve().parents[1]
RESNET20 = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 32, 32), 10)
# (label, gradient mode, surrogate spec)
MODES = [
    ("ANN (same network, ReLU, BN folded)", "ann", None),
    ("BPTT triangle:1, absolute (u - theta)", "bptt", "triangle:1:abs"),
    ("BPTT sigmoid:4, absolute", "bptt", "sigmoid:4:abs"),
    ("BPTT triangle:1, threshold-relative", "bptt", "triangle:1"),
    ("BPTT sigmoid:4, threshold-relative", "bptt", "sigmoid:4"),
    ("BPTT triangle:1, threshold-relative, detached reset", "bptt", "triangle:1:detach"),
    ("BPTR (through the firing rate)", "bptr", None),
]


def gradient_sizes(snn, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, float]:
    """L1 norms of the gradients that ``upstream`` at the logits gives, and relative sizes."""
    snn.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    snn(x).backward(upstream)
    sizes = {"weights": 0.0, "thresholds": 0.0, "weights_param": 0.0, "thresholds_param": 0.0}
    for name, param in snn.named_parameters():
        group = "thresholds" if name.endswith("threshold") else "weights"
        if param.grad is not None:
            sizes[group] += param.grad.abs().sum().item()
        sizes[f"{group}_param"] += param.detach().abs().sum().item()
    return {
        "weights_l1": sizes["weights"],
        "thresholds_l1": sizes["thresholds"],
        "input_l1": x.grad.abs().sum().item(),
        "weights_relative": sizes["weights"] / sizes["weights_param"],
        "thresholds_relative": sizes["thresholds"] / sizes["thresholds_param"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--calibration", default="percentile:99.99")
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gradient_health")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = str(args.data_dir / "cifar10_lossless_subset.npz")
    ann = load_ann(str(args.models_dir / "resnet20-12fca82f.th"), arch="resnet20",
                   preprocessing=RESNET20).model  # fmt: skip
    calib = DataLoader(load_dataset(data, "train", limit=256), batch_size=64)
    snn = convert(ann, calib, args.timesteps, args.calibration).eval()
    x, _ = next(iter(DataLoader(load_dataset(data, "test", limit=args.batch), args.batch)))
    upstream = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(1))
    rows = []
    for label, mode, surrogate in MODES:
        with snn.gradient(mode, surrogate):
            rows.append({"mode": label, **gradient_sizes(snn, x, upstream)})
    result = {
        "command": "python benchmarks/gradient_health.py " + " ".join(sys.argv[1:]),
        "config": {
            "calibration": args.calibration,
            "timesteps": args.timesteps,
            "batch": args.batch,
            "model": "resnet20-12fca82f.th",
        },
        "thresholds": [round(float(t.mean()), 2) for t in snn.thresholds.values()],
        "versions": package_versions(),
        "rows": rows,
    }
    write_json(args.out.with_suffix(".json"), result)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(result)))
    print(markdown(result))


def markdown(result: dict) -> str:
    config = result["config"]
    ann = result["rows"][0]
    lines = [
        "# Gradient health of BPTT through a converted SNN",
        "",
        f"Command: `{result['command']}`",
        "",
        f"ResNet-20 (shared akamaster checkpoint) converted with `{config['calibration']}` at "
        f"T={config['timesteps']}; layer thresholds (mean per layer) {result['thresholds']}. "
        f"One batch of {config['batch']} lossless CIFAR-10 test images; every backward pass "
        "starts from the same random gradient at the logits. L1 norms; `x ANN` = the ratio to the "
        "ANN row; relative = |grad| / |param| (L1 over L1) of the group.",
        "",
        "| gradient mode | weights L1 | x ANN | thresholds L1 | input L1 | x ANN | "
        "weights relative | thresholds relative |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['weights_l1']:.3g} | {r['weights_l1'] / ann['weights_l1']:.3g} | "
            f"{r['thresholds_l1']:.3g} | {r['input_l1']:.3g} | "
            f"{r['input_l1'] / ann['input_l1']:.3g} | {r['weights_relative']:.3g} | "
            f"{r['thresholds_relative']:.3g} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
