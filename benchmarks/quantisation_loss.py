"""How much of the robustness lost at low T is lost to quantisation alone (issue 15, part 1).

An IF neuron with reset by subtraction and a membrane starting at theta/2 turns a constant input
``x`` into ``theta * clamp(floor(x T / theta + 1/2) / T, 0, 1)`` over T steps: the QCFS function
with L = T levels (Bu et al., ICLR 2022). So an SNN at T carries two errors: the rounding of its
activations to L = T levels of its thresholds (a quantised ANN has it too) and the unevenness of
spike trains whose input varies over time (only the SNN has it). This script attacks, with the
same suite on the same images and with one SNN file's weights and thresholds:

- the file's ANN view (ReLU, unquantised), attacked as a plain network (its own gradient);
- that ANN view with every activation quantised to L levels of the layer's threshold (the
  forward pass exactly the QCFS function above, the backward pass that of ``min(x, theta)``:
  straight-through rounding);
- the SNN itself at T = L (the file's thresholds at every T, not recalibrated).

    OMP_NUM_THREADS=1 python benchmarks/quantisation_loss.py \
        --snn model_zoo/cifar10_resnet2b_pgd_snn_t8.safetensors \
        --data ../shared/data/cifar10_lossless_subset.npz --eps 2/255 --images 500 \
        --levels 4,8,16,32 --suite quick --out benchmarks/results/quantisation_loss

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from convertsnn.attacks.gradient_modes import ModelInMode
from convertsnn.data import load_dataset
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import run_suite
from convertsnn.numbers import parse_number
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import atomic_write, load_snn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snn", required=True, help="SNN file (its weights and thresholds)")
    parser.add_argument("--data", required=True, help="dataset .npz (test split)")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--images", type=int, default=500, help="first N test images")
    parser.add_argument("--levels", default="4,8,16,32", help="L = T values")
    parser.add_argument("--suite", default="quick", help="attack suite, or none (clean only)")
    parser.add_argument("--threshold-scale", type=float, default=1.0,
                        help="multiply every threshold of the file by this first")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="results path without suffix")
    return parser.parse_args(argv)


@contextmanager
def quantised_activations(snn: SpikingNetwork, levels: int) -> Iterator[None]:
    """While open, the SNN's ``ann`` view quantises each spiking layer's ReLU output to
    ``levels`` levels of the layer's threshold (straight-through backward)."""
    handles = []
    for name in snn.thresholds:
        module = snn.body.get_submodule(name)

        def quantise(_module, _inputs, out: torch.Tensor, name: str = name) -> torch.Tensor:
            t = module_theta(snn, name, out)
            clipped = torch.minimum(out, t)
            rounded = t * torch.clamp(torch.floor(out * levels / t + 0.5) / levels, 0, 1)
            return clipped + (rounded - clipped).detach()

        handles.append(module.register_forward_hook(quantise))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def module_theta(snn: SpikingNetwork, name: str, out: torch.Tensor) -> torch.Tensor:
    """Layer ``name``'s threshold, shaped to broadcast over ``out`` (scalar or per channel)."""
    theta = snn.thresholds[name].detach().to(out.device)
    if theta.numel() == 1:
        return theta.reshape(())
    return theta.reshape(1, -1, *([1] * (out.dim() - 2)))


def attacked(model: nn.Module, x, y, args, eps: float) -> dict:
    """Clean accuracy, and robust accuracy under ``args.suite`` (unless it is ``none``)."""
    torch.manual_seed(args.seed)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    if args.suite == "none":
        return {"clean": clean, "robust": None, "seconds": 0.0}
    settings = EvalSettings(eps=eps, seed=args.seed, progress=False)
    result = run_suite(args.suite, model, x, y, settings)
    return {"clean": clean, "robust": result.robust, "seconds": result.seconds}


def markdown(document: dict) -> str:
    lines = [
        "# Rounding alone vs the SNN at low T: the ANN view with L-level activations next to the SNN at T = L",
        "",
        f"Command: `{document['command']}`",
        "",
        f"Weights and thresholds of `{document['snn']}` (T = {document['file_timesteps']} in the "
        f"file; thresholds x {document.get('threshold_scale', 1.0):g}); first {document['images']} test images of `{document['data']}`; "
        f"`{document['suite']}` suite at eps {document['eps']}; {document['machine']}.",
        "",
        "| network | clean % | robust % | suite s |",
        "|---|---|---|---|",
    ]
    for label, row in document["rows"].items():
        robust = "-" if row["robust"] is None else f"{100 * row['robust']:.1f}"
        lines.append(f"| {label} | {100 * row['clean']:.1f} | {robust} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    eps = parse_number(args.eps, "--eps")
    x, y = load_dataset(args.data, split="test").subset(0, args.images).tensors()
    snn = load_snn(args.snn).eval()
    with torch.no_grad():
        for threshold in snn.thresholds.values():  # views of the neurons' thresholds
            threshold.mul_(args.threshold_scale)
    file_timesteps = snn.timesteps
    document = {
        "command": shlex.join(["python", *sys.argv]),
        "snn": args.snn,
        "file_timesteps": file_timesteps,
        "data": args.data,
        "images": len(x),
        "eps": args.eps,
        "suite": args.suite,
        "threshold_scale": args.threshold_scale,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "rows": {},
    }
    out = Path(args.out)

    def save() -> None:
        text = json.dumps(document, indent=2) + "\n"
        atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
        atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(document)))

    ann = ModelInMode(
        snn, "ann"
    )  # a plain module to the suite: its own (straight-through) gradient
    document["rows"]["ANN view (ReLU)"] = attacked(ann, x, y, args, eps)
    save()
    for levels in [int(v) for v in args.levels.split(",")]:
        with quantised_activations(snn, levels):
            row = attacked(ann, x, y, args, eps)
        document["rows"][f"ANN view quantised to L = {levels} levels"] = row
        save()
    for steps in [int(v) for v in args.levels.split(",")]:
        snn.timesteps = steps
        document["rows"][f"SNN at T = {steps}"] = attacked(snn, x, y, args, eps)
        save()
    print(markdown(document))


if __name__ == "__main__":
    main()
