"""Low-latency conversion of deep CIFAR-10 ResNets without training (issue 17).

For each model (the standard ResNet-20 and ResNet-56 of akamaster/pytorch_resnet_cifar10 and
the PGD-trained VNN-COMP ResNet-2B, all in --models-dir) and each calibration method (--rows),
the script converts the ANN for every T in --timesteps (every method is converted for each T, so
T-aware ones are tuned for it) and measures, in one run:

- the SNN's accuracy on the first --test-images lossless CIFAR-10 test images
  (cifar10_lossless_subset.npz), next to the ANN's on the same images;
- the conversion's CPU seconds (``time.process_time``, this process's threads; calibration and
  any post-conversion correction, not the evaluation).

A row ``spikingjelly:MODE[,channel_wise][,half_threshold]`` (e.g.
``spikingjelly:99.9%,channel_wise,half_threshold``) is the peer library's converter with those
options on the same network and images (``pip install --no-deps spikingjelly==2.0.0 loguru``).

Calibration uses the first --calib-images lossless *training* images (none for the data-free
rows). No test image is seen before evaluation. A small run (the default) is a quick check;
the full run is ``--test-images 1000 --timesteps 2,4,8,16,32``.

    OMP_NUM_THREADS=1 python benchmarks/fidelity_deep.py --data-dir ../shared/data \\
        --models-dir ../shared/models

Writes benchmarks/results/fidelity_deep.{json,md} (rows are saved as they finish; a rerun on
the same images adds the rows and T that are missing). The hardware-cost neuron variants,
``--signed-spikes``, ``--burst K`` and ``--population K``, write their own files
(``fidelity_deep_signed``, ``fidelity_deep_burstK``, ``fidelity_deep_populationK``), whose tables
fidelity_deep.md repeats in a section of their own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from fidelity_cifar10 import normalized, pad_shortcuts_as_convs, pooling_as_modules, prefix_accuracy
from torch.utils.data import DataLoader

from convertsnn.allocator import keep_freed_memory
from convertsnn.convert import convert, prepare_ann
from convertsnn.data import load_dataset
from convertsnn.eval.report import format_table, write_json
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.compiled import RUNTIMES
from convertsnn.snn.neurons import check_burst, check_population
from convertsnn.snn.serialize import atomic_write

ROOT = Path(__file__).resolve().parents[1]
AKAMASTER = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 32, 32), 10)
CIFAR = Preprocessing((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), (3, 32, 32), 10)
# name: (file in --models-dir, its normalisation); resnet2b is the PGD-trained VNN-COMP model
MODELS = {
    "resnet20": ("resnet20-12fca82f.th", AKAMASTER),
    "resnet56": ("resnet56-4bfd9763.th", AKAMASTER),
    "resnet2b": ("vnncomp_resnet2b_pgd2.pth", CIFAR),
}
ROWS = (
    "bnstats;bnmse;mse;biascal:mse;offset:mse;offset:biascal:mse;auto;"
    "ltb;delay:ltb;biascal:ltb;delay:biascal:ltb;delay:biascal:mse"
)
LOSSLESS = "cifar10_lossless_subset.npz"
DATA_FREE = ("bn", "synthetic")  # rows calibrated without the calibration images


def accuracy(model, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def run(args) -> dict:
    data = str(args.data_dir / LOSSLESS)
    test = DataLoader(load_dataset(data, "test", limit=args.test_images), batch_size=100)
    calib = DataLoader(load_dataset(data, "train", limit=args.calib_images), batch_size=64)
    result = earlier_result(args)
    result["commands"].append(shlex.join(["python", *sys.argv]))
    for name in args.models.split(","):
        file, preprocessing = MODELS[name]
        ann = load_ann(str(args.models_dir / file), arch=name, preprocessing=preprocessing).model
        ann.eval()
        model = result["models"].setdefault(name, {"file": file, "rows": {}})
        model["ann_accuracy"] = accuracy(ann, test)
        print(f"{name}: ANN {100 * model['ann_accuracy']:.1f} %", flush=True)
        for spec in args.rows.split(";"):
            empty = {"accuracy": {}, "convert_cpu_seconds": {}, "chosen": {}, "readout": {}}
            row = model["rows"].setdefault(spec, empty)
            row.setdefault("readout", {})
            missing = [t for t in args.timesteps if str(t) not in row["accuracy"]]
            if spec.startswith("spikingjelly:") and missing:
                spikingjelly_row(row, ann, calib, test, spec, missing)
                save(result, args.out, args.main)
                continue
            for t in missing:
                start = time.process_time()
                data = None if spec.startswith(DATA_FREE) else calib
                snn = convert(ann, data, t, spec, signed=args.signed_spikes, burst=args.burst,
                              population=args.population, runtime=args.runtime,
                              metadata={"input_size": list(preprocessing.input_size)})  # fmt: skip
                row["convert_cpu_seconds"][str(t)] = time.process_time() - start
                row["accuracy"][str(t)] = accuracy(snn, test)
                if "auto_calibration" in snn.metadata:
                    row["chosen"][str(t)] = snn.metadata["auto_calibration"]["chosen"]
                if snn.readout != "mean":
                    row["readout"][str(t)] = snn.readout
                print(
                    f"  {spec:22s} T={t:<3d} {100 * row['accuracy'][str(t)]:5.1f} %  "
                    f"({row['convert_cpu_seconds'][str(t)]:.0f} s CPU)",
                    flush=True,
                )
                save(result, args.out, args.main)
    return result


def spikingjelly_row(
    row: dict, ann, calib: DataLoader, test: DataLoader, spec: str, steps: list[int]
) -> None:
    """SpikingJelly's rate-coding converter, ``spikingjelly:MODE[,channel_wise][,half_threshold]``
    (MODE ``Max``, ``99.9%``, ...), converted once and read at every T of ``steps`` (IF neurons,
    soft reset, the mean of the first T logits); it gets the bare network with BatchNorm folded
    and normalised images (see ``fidelity_cifar10.spikingjelly_row``)."""
    from spikingjelly.activation_based import ann2snn, functional  # a peer: benchmarks only

    mode, *flags = spec.partition(":")[2].split(",")
    unknown = set(flags) - {"channel_wise", "half_threshold"}
    if unknown:
        raise SystemExit(f"unknown SpikingJelly option(s) {sorted(unknown)} in '{spec}'")
    normalize, net = ann[0], pad_shortcuts_as_convs(ann[1])
    sj_calib, sj_test = normalized(calib, normalize), normalized(test, normalize)
    start = time.process_time()
    recipe = ann2snn.RateCodingRecipe(
        dataloader=sj_calib,
        mode=mode,
        channel_wise="channel_wise" in flags,
        half_threshold="half_threshold" in flags,
    )
    graph = pooling_as_modules(prepare_ann(net))
    snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(graph).eval()
    seconds = time.process_time() - start

    def run_steps(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(snn)
        return torch.stack([snn(x) for _ in range(max(steps))])

    row["accuracy"].update(prefix_accuracy(run_steps, sj_test, steps, spec))
    row["convert_cpu_seconds"].update({str(t): seconds for t in steps})
    print(f"  {spec}: " + ", ".join(f"T={t} {100 * row['accuracy'][str(t)]:.1f} %" for t in steps))


def earlier_result(args) -> dict:
    """The results already in ``--out`` when they were measured on the same images (a rerun
    adds the rows and T it has not measured), else an empty result."""
    config = {"test_images": args.test_images, "calib_images": args.calib_images}
    if args.signed_spikes:
        config["signed_spikes"] = True
    if args.burst > 1:
        config["burst"] = args.burst
    if args.population > 1:
        config["population"] = args.population
    path = args.out.with_suffix(".json")
    if path.is_file():
        result = json.loads(path.read_text())
        if result["config"] == config:
            return result
    return {"commands": [], "config": config, "models": {}}


def variant(config: dict) -> str:
    """The neuron variant of a result, in words ("" for binary IF neurons)."""
    if config.get("signed_spikes"):
        return "signed spikes (hardware-cost variant)"
    if config.get("burst", 1) > 1:
        return f"burst neurons, K = {config['burst']} (hardware-cost variant)"
    if config.get("population", 1) > 1:
        return f"populations of K = {config['population']} binary neurons (hardware-cost variant)"
    return ""


def markdown(result: dict, variants: list[dict] = ()) -> str:
    """The Markdown page of ``result``; ``variants`` (results of the hardware-cost neuron
    variants on the same images) are appended in a section of their own."""
    config = result["config"]
    signed = config.get("signed_spikes", False)
    burst = config.get("burst", 1)
    population = config.get("population", 1)
    neurons = (
        "IF neurons with signed (ternary) spikes, " if signed
        else f"burst IF neurons (at most {burst} spikes per step), " if burst > 1
        else f"populations of {population} binary IF neurons (outputs averaged), "
        if population > 1
        else "IF neurons, "
    )  # fmt: skip
    membrane = (
        f"member k's membrane from (k + 1/2) / {population} theta" if population > 1
        else "membrane from theta/2 (unless `offset` moves it)"
    )  # fmt: skip
    lines = [
        "# Low-latency conversion of deep CIFAR-10 ResNets (no training)"
        + (f", {variant(config)}" if variant(config) else ""),
        "",
        "Commands (each adds the rows and T not measured yet):",
        "",
        *[f"    {command}" for command in result["commands"]],
        "",
        *result.get("notes", []),
        f"Test: the first {config['test_images']} lossless CIFAR-10 test images of `{LOSSLESS}` "
        f"(one image is {100 / config['test_images']:g} points; the standard error of an accuracy "
        f"near 80 % is {100 * (0.16 / config['test_images']) ** 0.5:.1f} points). "
        f"Calibration: its first {config['calib_images']} training images (`bn*` and `synthetic` rows: none). "
        "Accuracy in %; every method converted for each T; "
        + neurons
        + "reset by subtraction, "
        + membrane
        + ", direct input coding; the logits are "
        "averaged over all T steps except for `delay:` rows, whose readout skips the first D "
        "steps chosen on calibration images (listed under each table). CPU seconds: "
        "the conversion alone (`time.process_time`), measured while other jobs shared the two "
        "cores of this machine, so only their order of magnitude is telling. "
        "`spikingjelly:` rows: the peer library SpikingJelly 2.0's rate-coding converter on the "
        "same network and images (its IF neurons, soft reset, membrane from 0, or from "
        "theta/2 with `half_threshold`; the mean of the first T logits), converted once for "
        "all T.",
        "",
    ]
    lines += tables(result, "##")
    if variants:
        lines += [
            "## Hardware-cost neuron variants (not binary spikes)",
            "",
            "Measured on the same images with the same calibration data, but with neurons that "
            "binary-spike hardware does not have (docs/conversion.md); their own files hold "
            "the settings. Commands:",
            "",
        ]
        for other in variants:
            lines += [*[f"    {command}" for command in other["commands"]], ""]
        for other in variants:
            lines += tables(other, "###", f", {variant(other['config'])}")
    return "\n".join(lines)


def tables(result: dict, level: str, label: str = "") -> list[str]:
    """One accuracy table per model, with the calibrations chosen and the readouts."""
    steps = sorted({int(t) for m in result["models"].values() for r in m["rows"].values()
                    for t in r["accuracy"]})  # fmt: skip
    lines = []
    for name, model in result["models"].items():
        header = ["method", *[f"T={t}" for t in steps], "conversion CPU s (T: s)"]
        table = []
        for spec, row in model["rows"].items():
            accs = [f"{100 * row['accuracy'][str(t)]:.1f}" if str(t) in row["accuracy"] else ""
                    for t in steps]  # fmt: skip
            seconds = ", ".join(f"{t}: {s:.0f}" for t, s in row["convert_cpu_seconds"].items())
            table.append([f"`{spec}`", *accs, seconds])
        ann = f"ANN {100 * model['ann_accuracy']:.1f} % on these images"
        lines += [f"{level} {name}{label} ({ann})", ""]
        lines += [format_table(header, table, markdown=True), ""]
        for spec, row in model["rows"].items():
            if row["chosen"]:
                chosen = ", ".join(f"T={t}: `{c}`" for t, c in row["chosen"].items())
                lines += [f"`{spec}` chose {chosen}.", ""]
            if spec.startswith("delay:") or row.get("readout"):
                readouts = ", ".join(
                    f"T={t}: `{row['readout'].get(t, 'mean')}`" for t in row["accuracy"]
                )
                lines += [f"`{spec}` read out with {readouts}.", ""]
    return lines


def variant_results(out: Path, config: dict) -> list[dict]:
    """The results of the neuron variants next to ``out`` measured on the same images."""
    found = []

    def numbered(kind: str) -> list[Path]:
        paths = out.parent.glob(f"{out.name}_{kind}*.json")
        return sorted(paths, key=lambda p: (len(p.name), p.name))

    signed = out.with_name(f"{out.name}_signed.json")
    for path in [signed, *numbered("burst"), *numbered("population")]:
        if path.is_file():
            other = json.loads(path.read_text())
            same = {k: other["config"].get(k) for k in ("test_images", "calib_images")}
            if same == config:
                found.append(other)
    return found


def save(result: dict, out: Path, main: Path | None = None) -> None:
    """Write ``out``.json/.md; a variant's result also rewrites the binary page ``main``."""
    write_json(out.with_suffix(".json"), result)
    pages = [(out, result)]
    if main is not None and main.with_suffix(".json").is_file():
        pages.append((main, json.loads(main.with_suffix(".json").read_text())))
    for path, page in pages:
        extra = [] if variant(page["config"]) else variant_results(path, page["config"])
        text = markdown(page, extra)
        atomic_write(path.with_suffix(".md"), lambda tmp, text=text: Path(tmp).write_text(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--rows", default=ROWS, help="calibration specs separated by ;")
    parser.add_argument("--timesteps", default="4,8,16")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/fidelity_deep")
    parser.add_argument(
        "--signed-spikes",
        action="store_true",
        help="signed (ternary) neurons, a hardware-cost variant (default --out: ..._signed)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="burst neurons with up to K spikes per step, a hardware-cost variant "
        "(default --out: ..._burstK)",
    )
    parser.add_argument(
        "--population",
        type=int,
        default=1,
        help="populations of K binary neurons per unit, a hardware-cost variant "
        "(default --out: ..._populationK)",
    )
    parser.add_argument(
        "--runtime",
        default="eager",
        choices=RUNTIMES,
        help="the neurons' runtime for conversion and test (the same SNN and accuracy; compiled "
        "is faster for populations)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="tell glibc to keep freed memory, as the command line does (convertsnn/allocator.py; "
        "about 2x faster conversion here)",
    )
    args = parser.parse_args()
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory needs glibc (and no MALLOC_*_ variables set)")
    check_burst(args.burst, signed=args.signed_spikes)
    check_population(args.population, signed=args.signed_spikes, burst=args.burst)
    results = ROOT / "benchmarks/results"
    suffix = (
        "_signed" if args.signed_spikes
        else f"_burst{args.burst}" if args.burst > 1
        else f"_population{args.population}" if args.population > 1
        else ""
    )  # fmt: skip
    args.main = (results / "fidelity_deep") if suffix and args.out is None else None
    if args.out is None:
        args.out = results / f"fidelity_deep{suffix}"
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    torch.manual_seed(0)
    run(args)


if __name__ == "__main__":
    main()
