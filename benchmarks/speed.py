"""Speed of the spiking runtime: SNN against its own ANN, per T and batch size, in one process.

The network is the shared CIFAR-10 ResNet-20 (../shared/models), converted with
--calibration on the first lossless training images. Its ANN is the same network in ``ann``
gradient mode (BatchNorm folded, ReLU, one step), so a ratio isolates the cost of the spiking
dynamics: the dense limit of an SNN at T steps is T times its ANN. Three workloads:

- ``forward``: logits without gradients (evaluation);
- ``bptt``: a training step (forward, cross-entropy, backward through time, SGD update);
- ``input_grad``: the gradient of the loss with respect to the input only, with the parameters
  frozen as an attack freezes them (one attack step).

Every round times each workload of every (T, batch) once for the ANN and once for the SNN
(and, with ``--spikingjelly``, once for SpikingJelly 2.0's rate-coding conversion of the same ANN,
run single-step for T steps; with ``--compiled``, once for the SNN with the compiled runtime of
:mod:`convertsnn.snn.compiled`; with ``--folded-ann``, once for the ANN on T copies of the
batch, i.e. the SNN's convolutions without its neurons), interleaved, so slow phases of a
shared machine hit all; the report gives the median and the min-max of the per-round ratios
and the median absolute times. On CUDA every timing waits for the GPU
(``torch.cuda.synchronize``). ``--population K`` makes every unit K binary IF neurons (the
hardware-cost variant of ``convert --population``); ``--channels-last`` puts every network, the
ANN too, in the ``channels_last`` memory format.

Then, unless ``--no-costs``: the peak memory of one BPTT step per T (``--memory-timesteps``, at
the largest batch; ANN at the batch and at T x batch, SNN with ``memory`` full and checkpoint
and with the compiled runtime; each in a fresh process: CUDA's peak allocation, or on CPU the
peak resident memory with glibc told to give freed blocks back), the conversion time, the wall
time of ``convertsnn --help``, and the time of one ``quick`` suite run against one PGD-20 run on
``--suite-images`` correctly classified images at ``--suite-eps``.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --timesteps 1,2,4,8,16,32 \
        --batch 16,64
    python benchmarks/speed.py --device cuda --timesteps 4,8,16 --batch 256
    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --timesteps 1,2,4,8 --batch 16 \
        --spikingjelly   # SpikingJelly: pip install --no-deps spikingjelly==2.0.0 loguru

Writes --out .json and .md (default benchmarks/results/speed).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from convertsnn import convert
from convertsnn.allocator import keep_freed_memory
from convertsnn.attacks import PGD
from convertsnn.attacks.base import frozen_parameters
from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import write_json
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import run_suite
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.neurons import check_population
from convertsnn.snn.serialize import atomic_write, load_snn, package_versions, save_snn

ROOT = Path(__file__).resolve().parents[1]
RESNET20 = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 32, 32), 10)
WORKLOADS = ("forward", "bptt", "input_grad")
# result keys of each side; the columns they get in the report
PREFIXES = {"snn": "", "compiled": "compiled_", "folded_ann": "folded_", "spikingjelly": "sj_"}
COLUMNS = {"compiled": "SNN compiled", "folded_ann": "ANN folded (T x batch)",
           "spikingjelly": "SpikingJelly"}  # fmt: skip


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
            with frozen_parameters(model):
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


class FoldedANN(nn.Module):
    """The ANN on T copies of the batch (``[T*B, ...]``): the convolutions an SNN runs at T
    steps with time folded into the batch, without the neurons (T logits averaged)."""

    def __init__(self, snn: SpikingNetwork) -> None:
        super().__init__()
        self.ann, self.snn = AsANN(snn), snn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.snn.timesteps
        out = self.ann(x.repeat(steps, *([1] * (x.dim() - 1))))
        return out.view(steps, x.shape[0], -1).mean(0)


class SpikingJellyNetwork(nn.Module):
    """SpikingJelly 2.0's rate-coding conversion (IFNode, soft reset) of the same ANN, run
    single-step for ``timesteps`` steps; its mean output over time. As in
    ``benchmarks/fidelity_cifar10.py`` it gets the bare network (option-A shortcuts as fixed
    convolutions, pooling as modules) and normalised images."""

    def __init__(self, ann: nn.Module, calib: DataLoader, mode: str = "99.9%") -> None:
        super().__init__()
        from fidelity_cifar10 import normalized, pad_shortcuts_as_convs, pooling_as_modules
        from spikingjelly.activation_based import ann2snn

        from convertsnn.convert import prepare_ann

        self.normalize, net = ann[0], pad_shortcuts_as_convs(ann[1])
        recipe = ann2snn.RateCodingRecipe(dataloader=normalized(calib, self.normalize), mode=mode)
        graph = pooling_as_modules(prepare_ann(net))
        self.snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(graph).eval()
        self.timesteps = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.snn)
        x = self.normalize(x)
        return torch.stack([self.snn(x) for _ in range(self.timesteps)]).mean(0)


def source_ann(args) -> nn.Module:
    return load_ann(str(args.models_dir / "resnet20-12fca82f.th"), arch="resnet20",
                    preprocessing=RESNET20).model  # fmt: skip


def calibration_images(args) -> DataLoader:
    calib = load_dataset(str(args.data_dir / args.data), "train", limit=args.calib_images)
    return DataLoader(calib, batch_size=64)


def build_snn(args) -> SpikingNetwork:
    snn = convert(
        source_ann(args), calibration_images(args), 8, args.calibration, population=args.population
    )
    return snn.eval()


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
    start = time.perf_counter()
    snn = build_snn(args).to(device)
    convert_seconds = time.perf_counter() - start
    sides = {"ann": AsANN(snn), "snn": snn}
    if args.compiled:
        sides["compiled"] = copy.deepcopy(snn)
        sides["compiled"].runtime = "compiled"
    if args.folded_ann:
        sides["folded_ann"] = FoldedANN(snn)
    if args.spikingjelly:
        sides["spikingjelly"] = SpikingJellyNetwork(source_ann(args), calibration_images(args))
        sides["spikingjelly"].to(device)
    if args.channels_last:  # every side, the ANN too: its ratios compare like with like
        for model in sides.values():
            model.to(memory_format=torch.channels_last)
    cases = [(t, b) for t in args.timesteps for b in args.batch]
    data = {b: inputs(args, b, device) for b in args.batch}
    times: dict[tuple, list[float]] = {}
    for round_index in range(args.rounds + 1):  # round 0 warms up (allocator, cuDNN choice)
        for t, b in cases:
            snn.timesteps = t
            if args.compiled:
                sides["compiled"].timesteps = t
            if args.spikingjelly:
                sides["spikingjelly"].timesteps = t
            for name in WORKLOADS:
                for side, model in sides.items():
                    run = workload(name, model, *data[b])
                    taken = seconds(run, device, args.repeats)
                    if round_index:
                        times.setdefault((t, b, name, side), []).append(taken)
    rows = []
    for t, b in cases:
        for name in WORKLOADS:
            ann_times = times[(t, b, name, "ann")]
            row = {"T": t, "batch": b, "workload": name,
                   "ann_ms": 1000 * statistics.median(ann_times)}  # fmt: skip
            for side in list(sides)[1:]:
                prefix = PREFIXES[side]
                side_times = times[(t, b, name, side)]
                ratios = [s / a for s, a in zip(side_times, ann_times, strict=True)]
                row.update({
                    f"{prefix}snn_ms": 1000 * statistics.median(side_times),
                    f"{prefix}ratio_median": statistics.median(ratios),
                    f"{prefix}ratio_min": min(ratios), f"{prefix}ratio_max": max(ratios),
                })  # fmt: skip
            rows.append(row)
    result = {"rows": rows, "device_name": device_name(device),
              "convert_seconds": convert_seconds}  # fmt: skip
    if not args.no_costs:
        result["costs"] = costs(args, snn, device)
    return result


PROBE_MODES = ("ann", "ann_folded", "full", "checkpoint", "compiled")


def memory_probe(
    path: str, steps: int, batch: int, mode: str, device: str, shape: list[int]
) -> int:
    """Peak bytes allocated by one BPTT step (forward, loss, backward) of the SNN file ``path``
    on random images of ``shape`` in ``mode`` (see :data:`PROBE_MODES`; ``ann_folded``: the ANN
    on T x batch images; ``compiled``: memory ``full`` with the compiled runtime). Meant
    for a fresh process: on CPU it reads the peak resident memory, with glibc told to give
    every freed block of 64 KiB or more back to the system. A two-image step runs first (lazy
    imports, setup and compiling are not counted)."""
    if device == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    snn = load_snn(path, device)
    snn.timesteps = steps
    if mode.startswith("ann"):
        snn.set_gradient("ann")
        batch = batch * steps if mode == "ann_folded" else batch
    elif mode == "compiled":
        snn.runtime = "compiled"
    else:
        snn.memory = mode
    snn.train()
    x = torch.rand(batch, *shape, device=device)
    y = torch.arange(batch, device=device) % 10
    F.cross_entropy(snn(x[:2]), y[:2]).backward()  # warm-up: lazy imports, kernels, compiling
    snn.zero_grad(set_to_none=True)

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    if device == "cpu":
        base = status("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
    else:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    F.cross_entropy(snn(x), y).backward()
    if device == "cpu":
        return status("VmHWM:") - base
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def costs(args, snn: SpikingNetwork, device: torch.device) -> dict:
    """BPTT memory per T, ``convertsnn --help`` wall time, quick suite vs PGD-20 time."""
    batch = max(args.batch)
    shape = list(inputs(args, 1, device)[0].shape[1:])
    memory = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "snn.safetensors")
        save_snn(snn.cpu(), path)
        snn.to(device)
        for t in args.memory_timesteps:
            row = {"T": t, "batch": batch}
            for mode in PROBE_MODES:
                probe = [sys.executable, __file__, "--memory-probe",
                         json.dumps([path, t, batch, mode, str(device), shape])]  # fmt: skip
                out = subprocess.run(probe, capture_output=True, text=True, check=True)
                row[f"{mode}_mb"] = int(out.stdout.strip().splitlines()[-1]) / 2**20
            memory.append(row)
    help_seconds = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "convertsnn", "--help"], capture_output=True,
                       check=True)  # fmt: skip
        help_seconds.append(time.perf_counter() - start)
    snn.timesteps = 8
    x, y = inputs(args, 8 * args.suite_images, device)
    with torch.no_grad():
        correct = snn(x).argmax(1) == y
    x, y = x[correct][: args.suite_images], y[correct][: args.suite_images]
    eps = args.suite_eps
    start = time.perf_counter()
    suite = run_suite("quick", snn, x, y, EvalSettings(eps, progress=False))
    suite_seconds = time.perf_counter() - start
    start = time.perf_counter()
    attack = PGD(snn, eps, steps=20)
    pgd_robust = float((attack.predict(attack(x, y)) == y).float().mean())
    pgd_seconds = time.perf_counter() - start
    return {"memory": memory, "help_seconds": help_seconds, "suite_images": len(y),
            "suite_eps": eps, "quick_suite_seconds": suite_seconds,
            "quick_suite_robust": suite.robust,
            "pgd20_seconds": pgd_seconds, "pgd20_robust": pgd_robust}  # fmt: skip


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}), {torch.get_num_threads()} thread(s)"


def cpu_model() -> str:
    """The CPU's model name and cache sizes (Linux: /proc/cpuinfo, sysfs), else the platform's
    word: the ratios to the ANN depend on the CPU (its cache decides what the folded batch of
    T x batch images costs)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(
            line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, size = (
                (index / "level").read_text().strip(),
                (index / "size").read_text().strip(),
            )
            kind = (index / "type").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level} {size}")
    return ", ".join([name, *caches])


def population_words(population: int) -> str:
    """How a page names populations of ``population`` binary neurons per unit (1: nothing)."""
    if population == 1:
        return ""
    return (
        f", every unit a population of {population} binary IF neurons (a hardware-cost variant: "
        f"{population} x the neuron work, the same convolutions; SpikingJelly: one neuron per unit)"
    )


def markdown(result: dict) -> str:
    extra = [side for side in COLUMNS if result["config"].get(side)]
    lines = [
        "# Spiking runtime speed",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device_name']}. Model: ResNet-20 (shared akamaster checkpoint) "
        f"converted with `{result['config']['calibration']}`"
        f"{population_words(result['config'].get('population', 1))}; "
        "ANN = the same network in `ann` "
        f"mode (BN folded, one step); inputs: {result['config']['inputs']} CIFAR-10 images of "
        f"`{result['config']['data']}`. {result['config']['rounds']} interleaved rounds after a "
        f"warm-up round, {result['config']['repeats']} calls per timing"
        f"{'; glibc keeps freed memory' if result['config']['keep_freed_memory'] else ''}"
        f"{'; every network channels_last' if result['config'].get('channels_last') else ''}. "
        "Ratio = SNN time / "
        "ANN time (median [min-max] over rounds); the dense limit is T.",
        "",
        "| T | batch | workload | ANN ms | SNN ms | SNN / ANN | SNN / (T x ANN) |"
        + "".join(f" {COLUMNS[side]} ms | {COLUMNS[side]} / ANN |" for side in extra),
        "|---|---|---|---|---|---|---|" + "---|---|" * len(extra),
    ]
    for r in result["rows"]:
        line = (
            f"| {r['T']} | {r['batch']} | {r['workload']} | {r['ann_ms']:.2f} | "
            f"{r['snn_ms']:.2f} | {r['ratio_median']:.2f} [{r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}] | {r['ratio_median'] / r['T']:.2f} |"
        )
        for side in extra:
            p = PREFIXES[side]
            line += (
                f" {r[p + 'snn_ms']:.2f} | {r[p + 'ratio_median']:.2f} "
                f"[{r[p + 'ratio_min']:.2f}-{r[p + 'ratio_max']:.2f}] |"
            )
        lines.append(line)
    lines += ["", f"Conversion ({result['config']['calibration']}, "
              f"{result['config']['calib_images']} images): {result['convert_seconds']:.1f} s."]  # fmt: skip
    costs = result.get("costs")
    if costs:
        help_s = costs["help_seconds"]
        lines += [
            f"`convertsnn --help` wall time: median {statistics.median(help_s):.2f} s "
            f"[{min(help_s):.2f}-{max(help_s):.2f}] over {len(help_s)} runs.",
            f"One `quick` suite run on {costs['suite_images']} correctly classified test images at "
            f"T=8, eps {255 * costs['suite_eps']:.3g}/255: {costs['quick_suite_seconds']:.1f} s "
            f"(robust accuracy {costs['quick_suite_robust']:.1%}); one PGD-20 run: "
            f"{costs['pgd20_seconds']:.1f} s ({costs['pgd20_robust']:.1%}); ratio "
            f"{costs['quick_suite_seconds'] / costs['pgd20_seconds']:.1f}. The suite attacks only "
            "the images still robust, so its cost depends on the model's robustness.",
            "",
            "Peak memory of one BPTT step (MB; forward, loss, backward), each in a fresh process: "
            "ANN at the batch and at T x batch (folded), SNN keeping everything (`full`), with "
            "`--memory checkpoint` and with `--runtime compiled` (which saves only each spiking "
            "layer's input).",
            "",
            "| T | batch | ANN | ANN folded | SNN full | SNN checkpoint | SNN compiled | "
            "full / folded | checkpoint / folded | compiled / folded |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in costs["memory"]:
            folded = m["ann_folded_mb"]
            compiled = m.get("compiled_mb")  # results written before it was measured lack it
            lines.append(
                f"| {m['T']} | {m['batch']} | {m['ann_mb']:.0f} | {folded:.0f} | "
                f"{m['full_mb']:.0f} | {m['checkpoint_mb']:.0f} | "
                + (f"{compiled:.0f}" if compiled is not None else "-")
                + f" | {m['full_mb'] / folded:.2f} | {m['checkpoint_mb'] / folded:.2f} | "
                + (f"{compiled / folded:.2f}" if compiled is not None else "-")
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--data", default="cifar10_lossless_subset.npz")
    parser.add_argument("--calibration", default="percentile:99.99")
    parser.add_argument("--population", type=int, default=1,
                        help="binary IF neurons per unit (convert --population)")  # fmt: skip
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--timesteps", default="1,2,4,8,16,32")
    parser.add_argument("--batch", default="16,64")
    parser.add_argument("--inputs", choices=("real", "random"), default="real")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--spikingjelly", action="store_true",
                        help="also time SpikingJelly 2.0's conversion of the same ANN")  # fmt: skip
    parser.add_argument("--compiled", action="store_true",
                        help="also time the SNN with the compiled runtime")  # fmt: skip
    parser.add_argument("--folded-ann", action="store_true",
                        help="also time the ANN on T x batch images (the convolutions alone)")  # fmt: skip
    parser.add_argument("--no-costs", action="store_true",
                        help="skip memory, conversion, --help and suite costs")  # fmt: skip
    parser.add_argument("--memory-timesteps", default="1,2,4,8,16,32")
    parser.add_argument("--suite-images", type=int, default=16,
                        help="correctly classified test images for the suite-cost run")  # fmt: skip
    parser.add_argument("--suite-eps", type=float, default=1 / 255)
    parser.add_argument("--channels-last", action="store_true",
                        help="every network (the ANN too) in the channels_last memory format")  # fmt: skip
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory, as the command line sets it")  # fmt: skip
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one probe
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/speed")
    args = parser.parse_args()
    if args.memory_probe:
        print(memory_probe(*json.loads(args.memory_probe)))
        return
    try:
        check_population(args.population)
    except ConvertSNNError as error:
        parser.error(str(error))
    args.memory_timesteps = [int(t) for t in args.memory_timesteps.split(",")]
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs glibc (and no MALLOC_*_ variables set)")
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
