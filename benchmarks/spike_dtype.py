"""Cost of the neuron's elementwise kernels with spikes held as ``bool`` or as 0/1 floats.

The eager neuron (``integrate_and_fire`` in convertsnn/snn/neurons.py) runs a few full-tensor
kernels per time step; which dtype holds the spikes decides their cost on CPU. This times, on
one spiking layer's activation (``--shape``, default a ResNet-20 first-stage layer at batch 64),
one thread, interleaved rounds, the median and min of the per-call times of:

- ``ge``: the threshold comparison into a bool or into a float tensor;
- ``out``: ``theta * spike`` as ``where(bool, theta, 0)`` or ``mul(float, theta)``;
- ``read``: a gradient masked by the spikes (the threshold gradient's ``d * s``) as
  ``mul(d, bool)``, ``where(bool, d, 0)`` or ``mul(d, float)``;
- one forward step (add, compare, output, reset by subtraction) both ways.

    OMP_NUM_THREADS=1 python benchmarks/spike_dtype.py --out benchmarks/results/spike_dtype

Writes --out .json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from convertsnn.eval.report import write_json
from convertsnn.snn.serialize import atomic_write


def kernels(shape: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    """The timed calls, on fresh tensors of ``shape`` with a per-channel threshold."""
    torch.manual_seed(0)
    h, d, current = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    theta = torch.rand(1, shape[1], *([1] * (len(shape) - 2))) + 0.5
    zero = h.new_zeros(())
    spike_bool = torch.empty(shape, dtype=torch.bool)
    spike_float, out, u = torch.empty_like(h), torch.empty_like(h), torch.zeros_like(h)
    torch.ge(h, theta, out=spike_bool)
    torch.ge(h, theta, out=spike_float)

    def step_bool():
        v = torch.add(current, u)
        s = torch.ge(v, theta, out=spike_bool)
        torch.sub(v, torch.where(s, theta, zero, out=out), out=u)

    def step_float():
        v = torch.add(current, u)
        torch.ge(v, theta, out=spike_float)
        torch.sub(v, torch.mul(spike_float, theta, out=out), out=u)

    return {
        "ge -> bool": lambda: torch.ge(h, theta, out=spike_bool),
        "ge -> float": lambda: torch.ge(h, theta, out=spike_float),
        "out: where(bool, theta, 0)": lambda: torch.where(spike_bool, theta, zero, out=out),
        "out: mul(float, theta)": lambda: torch.mul(spike_float, theta, out=out),
        "read: mul(d, bool)": lambda: torch.mul(d, spike_bool),
        "read: where(bool, d, 0)": lambda: torch.where(spike_bool, d, 0.0),
        "read: mul(d, float)": lambda: torch.mul(d, spike_float),
        "forward step, bool spikes": step_bool,
        "forward step, float spikes": step_float,
    }


def measure(shape: tuple[int, ...], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    timed = kernels(shape)
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds + 1):  # the first round warms up
        for name, call in timed.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {
        name: {"median_ms": statistics.median(v[1:]), "min_ms": min(v[1:])}
        for name, v in times.items()
    }


def markdown(result: dict) -> str:
    lines = [
        "# Spikes as bool or as float: the neuron's elementwise kernels",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Shape {result['shape']}, float32, per-channel threshold, {result['threads']} thread(s), "
        f"{result['rounds']} interleaved rounds of {result['calls']} calls after a warm-up round; "
        "ms per call, median [min] over rounds. torch " + result["torch"] + ".",
        "",
        "| kernel | ms |",
        "|---|---|",
    ]
    for name, t in result["kernels"].items():
        lines.append(f"| {name} | {t['median_ms']:.3f} [{t['min_ms']:.3f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="64,16,32,32", help="comma-separated tensor shape")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/spike_dtype"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    result = {
        "command": "python benchmarks/spike_dtype.py "
        + f"--shape {args.shape} --rounds {args.rounds} --calls {args.calls} --out {args.out}",
        "shape": list(shape),
        "threads": args.threads,
        "rounds": args.rounds,
        "calls": args.calls,
        "torch": torch.__version__,
        "kernels": measure(shape, args.rounds, args.calls),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), result)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(result)))
    print(markdown(result))


if __name__ == "__main__":
    main()
