"""Where a converted SNN's error comes from, layer by layer: timing, or carried in from below.

Over T steps an IF neuron with reset by subtraction and initial membrane ``v0 theta`` can emit
at most ``floor(sum_t I_t / theta + v0)`` spikes, clipped to ``[0, T]`` ("allowed"), given its
input currents ``I_t``: what the neuron would emit if its input were spread evenly over time (a
quantised ANN's output for that total). The SNN's actual count differs from it when the input
arrives late (fewer spikes) or falls after the neuron has fired (more spikes): the unevenness
error, made at this layer. The allowed count differs from the ANN's clipped activation (in
spikes, ``T min(relu(z), theta) / theta``) by the rounding to T levels and by everything the
layers below got wrong. Per spiking layer, on the first test images, in spikes per neuron (of T):

- ``late``, ``extra``: mean of (allowed - count)+ and (count - allowed)+;
- ``|count - ANN|``: the layer's total deviation from the source ANN;
- ``|allowed - ANN|``: the same without this layer's timing error.

Also the accuracy of the SNN; of its weights, and of the source ANN's, as an ANN whose
activations are rounded to T levels of the SNN's thresholds (``benchmarks/quantisation_loss.py``'s
quantised ANN: no timing error); and of the source ANN. The ANN is the source ANN: ``--reference`` (default ``--snn``) in ``ann`` mode with bias
calibration's shifts taken back, and ``--snn``'s thresholds (give the file converted without
``wcal`` as the reference of a ``wcal`` file, whose weights no longer lead back to the ANN).

    OMP_NUM_THREADS=1 python benchmarks/spike_count_errors.py --snn r56.safetensors \\
        --data ../shared/data/cifar10_lossless_subset.npz --images 500 \\
        --out benchmarks/results/spike_count_errors_resnet56

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from quantisation_loss import quantised_activations

from convertsnn.attacks.gradient_modes import ModelInMode
from convertsnn.convert.calibration.offset import clipped_activations
from convertsnn.convert.calibration.sequential import run_layer_by_layer
from convertsnn.data import load_dataset
from convertsnn.eval.robustness import accuracy
from convertsnn.objectives.distill import take_back_calibration
from convertsnn.snn.network import read_out
from convertsnn.snn.neurons import IFNeuron
from convertsnn.snn.serialize import atomic_write, load_snn

COLUMNS = ("late", "extra", "count_vs_ann", "allowed_vs_ann")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snn", required=True, help="SNN file (one binary neuron per unit)")
    parser.add_argument(
        "--reference", help="file whose source ANN gives the targets (default: --snn)"
    )
    parser.add_argument("--data", required=True, help="dataset .npz (test split)")
    parser.add_argument("--images", type=int, default=500, help="first N test images")
    parser.add_argument("--out", required=True, help="results path without suffix")
    return parser.parse_args(argv)


def layer_errors(neuron: IFNeuron, current: torch.Tensor, target: torch.Tensor) -> dict:
    """The four columns for one spiking layer, from its input currents ``[T*B, ...]`` and the
    ANN's clipped activations ``[B, ...]``; also returns the layer's output."""
    steps = neuron.timesteps
    out = neuron(current)
    theta = neuron._theta(current.dim())
    count = (out / theta).view(steps, -1, *out.shape[1:]).sum(0)
    total = current.view(steps, -1, *current.shape[1:]).sum(0)
    allowed = torch.clamp(torch.floor(total / theta + neuron.v_init), 0, steps)
    ann = target.to(current.device) / theta * steps
    return {
        "late": (allowed - count).clamp(min=0).mean().item(),
        "extra": (count - allowed).clamp(min=0).mean().item(),
        "count_vs_ann": (count - ann).abs().mean().item(),
        "allowed_vs_ann": (allowed - ann).abs().mean().item(),
    }, out


def plain_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    batches = list(zip(x.split(250), y.split(250), strict=True))
    return accuracy(model, batches, torch.device("cpu"), progress=False)


def markdown(document: dict) -> str:
    lines = [
        "# Spike-count errors per layer: timing at the layer, or carried in from below",
        "",
        f"Command: `{document['command']}`",
        "",
        f"`{document['snn']}` (T = {document['timesteps']}, readout {document['readout']}; "
        f"source ANN from `{document['reference']}`), first {document['images']} test images of "
        f"`{document['data']}`: SNN accuracy {100 * document['accuracy']:.1f} %; as an ANN with "
        "every activation rounded to T levels of the thresholds (a quantised ANN: no timing "
        f"error), its own weights {100 * document['rounded_ann_accuracy']:.1f} %, the source "
        f"ANN's {100 * document['rounded_source_ann_accuracy']:.1f} %; the source ANN "
        f"{100 * document['source_ann_accuracy']:.1f} %. Spikes per "
        "neuron (of T): late / extra = fewer / more spikes than the layer's total input allows; "
        "|count - ANN| = the layer's deviation from the source ANN's clipped activation; "
        "|allowed - ANN| = the same without the layer's own timing error.",
        "",
        "| layer | late | extra | \\|count - ANN\\| | \\|allowed - ANN\\| |",
        "|---|---|---|---|---|",
    ]
    for name, row in document["layers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    x, y = load_dataset(args.data, split="test").subset(0, args.images).tensors()
    snn = load_snn(args.snn).eval()
    if any(n.population > 1 or n.burst > 1 or n.signed for n in snn.neurons()):
        sys.exit(
            "spike_count_errors.py: one binary neuron per unit only (no --population, burst or signed)"
        )
    reference = load_snn(args.reference or args.snn).eval()
    take_back_calibration(reference)
    for name, theta in snn.thresholds.items():  # the SNN's thresholds clip the ANN's activations
        reference.thresholds[name].data.copy_(theta)
    device = torch.device("cpu")
    targets = clipped_activations(reference, x, device)
    layers: dict[str, dict] = {}

    def step(name: str, neuron: IFNeuron, current: torch.Tensor) -> torch.Tensor:
        layers[name], out = layer_errors(neuron, current, targets.pop(name))
        return out

    logits = run_layer_by_layer(snn, x, snn.timesteps, step, device, desc="spike counts")
    snn_accuracy = (read_out(logits, snn.readout_delay).argmax(1) == y).float().mean().item()
    with quantised_activations(snn, snn.timesteps):
        rounded = plain_accuracy(ModelInMode(snn, "ann"), x, y)
    with quantised_activations(reference, snn.timesteps):
        rounded_source = plain_accuracy(ModelInMode(reference, "ann"), x, y)
    document = {
        "command": shlex.join(["python", *sys.argv]),
        "snn": args.snn,
        "reference": args.reference or args.snn,
        "data": args.data,
        "images": len(x),
        "timesteps": snn.timesteps,
        "readout": snn.readout,
        "accuracy": snn_accuracy,
        "rounded_ann_accuracy": rounded,
        "rounded_source_ann_accuracy": rounded_source,
        "source_ann_accuracy": plain_accuracy(ModelInMode(reference, "ann"), x, y),
        "layers": layers,
    }
    out = Path(args.out)
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(document)))
    print(markdown(document))


if __name__ == "__main__":
    main()
