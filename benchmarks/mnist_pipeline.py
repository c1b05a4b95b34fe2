"""MNIST pipeline benchmark: shipped robust ANN -> SNN (max and percentile), clean and PGD accuracy.

Run from the repository root:

    python benchmarks/mnist_pipeline.py --data ../shared/data/mnist.npz

Writes benchmarks/results/mnist_pipeline.{md,json}. Calibration uses the first
``--calib-images`` training images; accuracy is measured on the whole test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convertsnn import convert
from convertsnn.attacks import PGD
from convertsnn.cli.demo import DEMO_MODEL
from convertsnn.data import load_dataset
from convertsnn.eval.report import format_table
from convertsnn.eval.robustness import evaluate_over_timesteps
from convertsnn.importers import load_ann


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--data", default="../shared/data/mnist.npz")
    parser.add_argument("--calibrations", default="max,percentile:99.99")
    parser.add_argument("--timesteps", default="4,8,16,32")
    parser.add_argument("--attack-timesteps", default="8")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--out", default="benchmarks/results/mnist_pipeline")
    args = parser.parse_args()

    torch.manual_seed(0)
    ann = load_ann(args.model)
    calib = DataLoader(load_dataset(args.data, "train", limit=args.calib_images), batch_size=128)
    test = load_dataset(args.data, "test", limit=args.limit)
    loader = DataLoader(test, batch_size=500)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    attack_ts = [int(t) for t in args.attack_timesteps.split(",")]

    def make_attack(model, eps):
        return PGD(model, eps, steps=args.steps)

    results = {}
    for i, calibration in enumerate(args.calibrations.split(",")):
        start = time.perf_counter()
        snn = convert(ann.model, calib, timesteps=max(timesteps), calibration=calibration)
        rows = evaluate_over_timesteps(
            snn, loader, timesteps, [args.eps], make_attack,
            include_ann=i == 0, attack_timesteps=attack_ts,
        )  # fmt: skip
        results[calibration] = {"rows": rows, "seconds": time.perf_counter() - start}
        print(calibration, [(r.model, r.clean, r.robust) for r in rows], flush=True)

    eps_key = f"{args.eps:.6g}"
    header = ["model", "calibration", "clean %", f"PGD-{args.steps} eps={args.eps:g} %"]
    lines = []
    for calibration, result in results.items():
        for row in result["rows"]:
            robust = row.robust.get(eps_key)
            lines.append([
                row.model, "-" if row.timesteps is None else calibration,
                f"{100 * row.clean:.2f}", "-" if robust is None else f"{100 * robust:.2f}",
            ])  # fmt: skip
    command = "python " + " ".join(sys.argv)
    md = [
        "# MNIST pipeline: robust ANN -> SNN",
        "",
        f"Command: `{command}`",
        "",
        f"- Model: `{Path(args.model).name}` (PGD-trained MNIST CNN, recipe "
        "`recipes/demo_mnist_cnn.py`).",
        f"- Data: `{Path(args.data).name}`: calibration on the first {args.calib_images} "
        f"training images; accuracy on {len(test)} test images.",
        "- SNN: IF neurons, reset by subtraction, initial membrane 0.5 threshold, direct input "
        "coding, mean logits over T.",
        f"- Attack: L-inf PGD, {args.steps} steps of 2.5·eps/steps, random start, cross-entropy, "
        "BPTT through the triangle surrogate (g = 1) in eval mode; ANN row = same weights with "
        "ReLU.",
        f"- Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
        "",
        format_table(header, lines, markdown=True),
        "",
        "Wall time per calibration (conversion + all rows): "
        + ", ".join(f"{k}: {v['seconds']:.0f} s" for k, v in results.items()),
        "",
        "Caveat: PGD through one fixed surrogate is the issue's reference attack, not an honest "
        "robustness number for an SNN (it can land above the ANN's, as the surrogate hides part "
        "of the gradient). The adaptive suites of `convertsnn evaluate --suite` are; see "
        "`benchmarks/results/evaluation.md` (section mnist-demo-cnn-T8) and "
        "`benchmarks/results/zoo.md` for this model under them.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(md))
    payload = {"command": command, "data": Path(args.data).name, "test_images": len(test),
               "results": results}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=lambda o: o.__dict__))
    print("\n".join(md))


if __name__ == "__main__":
    main()
