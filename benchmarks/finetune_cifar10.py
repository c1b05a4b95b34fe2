"""Robust finetuning of converted SNNs on real CIFAR-10, at a scale that fits 2 CPU cores.

Two robust source ANNs, each converted to an SNN (T=8) and finetuned with every objective:

- ``pgd``: the PGD-trained (eps 2/255) VNN-COMP ResNet-2B from ../shared/models;
- ``trades``: the same small CNN architecture (``resnet2b``: five 3x3 convolutions and a 1x1
  shortcut in two residual blocks, two linear layers, 0.1M parameters) trained here from scratch with
  ``convertsnn train --objective trades`` (recipes/cifar10_trades_ann.yaml, scaled down).

Stages (each skips finished work, so a killed benchmark is simply rerun):
``ann`` trains the TRADES network, ``convert`` converts both ANNs, ``finetune`` runs the four
objectives, ``eval`` measures clean and PGD-20 (BPTT) accuracy at 2/255 and 8/255 on the 1,000
lossless test images, ``speed`` times one adversarial finetuning step (SNN T=8 vs the same step
on the ANN) with peak memory, and ``report`` writes benchmarks/results/finetune_cifar10.{md,json}.

Run from the repository root (about 3 h on 2 shared CPU cores):
    python benchmarks/finetune_cifar10.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convertsnn import convert, load_snn, save_snn
from convertsnn.attacks import PGD
from convertsnn.data import load_dataset
from convertsnn.eval.report import format_table, write_json
from convertsnn.finetune import FinetuneConfig, TrainConfig, finetune, load_recipe, train
from convertsnn.finetune.surrogate import threshold_relative
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.serialize import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
OBJECTIVES = {
    "trades-rfgsm": "seed001_trades_rfgsm.yaml",
    "pgd-at": "finetune_pgd_at.yaml",
    "trades": "finetune_trades.yaml",
    "mart": "finetune_mart.yaml",
}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
SOURCES = {"pgd": "ResNet-2B, PGD (VNN-COMP)", "trades": "ResNet-2B, TRADES (trained here)"}
EPS = {"2/255": 2 / 255, "8/255": 8 / 255}
STAGES = ("ann", "convert", "finetune", "eval", "speed", "report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "finetune_cifar10")
    parser.add_argument("--ann-images", type=int, default=50000)
    parser.add_argument("--ann-epochs", type=int, default=15)
    parser.add_argument("--ann-attack-steps", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--measure-step", nargs=3, metavar=("SNN", "OBJECTIVE", "MODE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.measure_step:
        measure_step(*args.measure_step, args)
        return
    args.data_dir, args.work = args.data_dir.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    for stage in STAGES:
        if stage in stages:
            print(f"== {stage}", flush=True)
            globals()[f"stage_{stage}"](args)


def lossless(args) -> str:
    return str(args.data_dir / "cifar10_lossless_subset.npz")


def stage_ann(args) -> None:
    """Train ResNet-2B with TRADES (the recipe, scaled: fewer epochs and attack steps)."""
    values = load_recipe(RECIPES / "cifar10_trades_ann.yaml")
    values.update(arch="resnet2b", data=str(args.data_dir / "cifar10_jpeg.npz"),
                  train_images=args.ann_images, epochs=args.ann_epochs,
                  attack_steps=args.ann_attack_steps, out_dir=str(args.work / "ann_trades"),
                  resume=True, device="cpu", progress=False)  # fmt: skip
    result = train(TrainConfig.from_dict(values))
    print(f"trained: best epoch {result.best_epoch}: {result.best_record}", flush=True)


def load_source(name: str, args):
    if name == "pgd":
        return load_ann(str(args.models_dir / "vnncomp_resnet2b_pgd2.pth"), arch="resnet2b",
                        preprocessing=Preprocessing(CIFAR_MEAN, CIFAR_STD, (3, 32, 32), 10))  # fmt: skip
    return load_ann(str(args.work / "ann_trades" / "best.safetensors"))


def naive_path(name: str, args) -> Path:
    return args.work / f"{name}_snn_T8.safetensors"


def run_dir(name: str, objective: str, args) -> Path:
    return args.work / f"{name}_finetune_{objective}"


def stage_convert(args) -> None:
    """Convert each ANN (percentile:99.99 on 512 training images, T=8), as `convertsnn convert`."""
    calib = load_dataset(lossless(args), split="train", limit=512)
    for name in args.sources.split(","):
        path = naive_path(name, args)
        if path.is_file():
            continue
        ann = load_source(name, args)
        metadata = ann.metadata()
        metadata["calibration_data"] = {"spec": Path(lossless(args)).name, "images": len(calib)}
        snn = convert(ann.model, DataLoader(calib, batch_size=128), timesteps=8,
                      calibration="percentile:99.99", metadata=metadata)  # fmt: skip
        save_snn(snn, path)
        print(f"converted {name} -> {path}", flush=True)


def finetune_config(name: str, objective: str, args) -> FinetuneConfig:
    values = load_recipe(RECIPES / OBJECTIVES[objective])
    values.update(model=str(naive_path(name, args)), data=lossless(args),
                  train_images=args.train_images, epochs=args.epochs,
                  out_dir=str(run_dir(name, objective, args)), resume=True, device="cpu",
                  progress=False)  # fmt: skip
    if objective != "trades-rfgsm":
        values["attack_steps"] = args.attack_steps
    return FinetuneConfig.from_dict(values)


def stage_finetune(args) -> None:
    for name in args.sources.split(","):
        for objective in OBJECTIVES:
            start = time.perf_counter()
            result = finetune(finetune_config(name, objective, args))
            best = result.best_record
            print(f"{name} {objective}: best epoch {result.best_epoch}, held-out clean "
                  f"{best['val_clean_acc']:.3f} robust {best['val_robust_acc']:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip


def robust_mask(snn, x, y, eps: float, surrogate_scales: tuple[str, ...]) -> torch.Tensor:
    """Per sample: correct on clean and on PGD-20 examples of every gradient variant (a sample
    counts as robust only if it survives all; later variants attack the survivors)."""
    with torch.no_grad():
        alive = snn(x).argmax(1) == y
    for scale in surrogate_scales:
        index = alive.nonzero().squeeze(1)
        if len(index) == 0:
            break
        with threshold_relative(snn) if scale == "threshold" else nullcontext():
            x_adv = PGD(snn, eps, steps=20)(x[index], y[index])
        with torch.no_grad():
            alive[index] = snn(x_adv).argmax(1) == y[index]
    return alive


def evaluate_model(snn, mode: str, args) -> dict:
    """Clean and robust accuracy on the lossless test images (``mode``: ``ann`` or ``bptt``)."""
    test = load_dataset(lossless(args), split="test", limit=args.test_images)
    scales = ("absolute",) if mode == "ann" else ("absolute", "threshold")
    torch.manual_seed(0)
    start = time.perf_counter()
    correct = {"clean": 0, **{k: 0 for k in EPS}}
    with snn.gradient(mode):
        for x, y in DataLoader(test, batch_size=250):
            with torch.no_grad():
                correct["clean"] += (snn(x).argmax(1) == y).sum().item()
            for key, eps in EPS.items():
                correct[key] += robust_mask(snn, x, y, eps, scales).sum().item()
    result = {k: v / len(test) for k, v in correct.items()}
    result.update(images=len(test), seconds=round(time.perf_counter() - start, 1))
    return result


def stage_eval(args) -> None:
    out_dir = args.work / "eval"
    out_dir.mkdir(exist_ok=True)
    for name in args.sources.split(","):
        models = [
            ("ANN", naive_path(name, args), "ann"),
            ("naive SNN", naive_path(name, args), "bptt"),
        ]
        models += [
            (f"SNN {o}", run_dir(name, o, args) / "best.safetensors", "bptt") for o in OBJECTIVES
        ]
        for label, path, mode in models:
            target = out_dir / f"{name}_{label.replace(' ', '_')}.json"
            if target.is_file():
                continue
            result = {"model": label, "file": str(path.relative_to(args.work)), "mode": mode,
                      **evaluate_model(load_snn(path), mode, args)}  # fmt: skip
            write_json(target, result)
            print(f"{name} {label}: {result}", flush=True)


def memory_kb(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak since the last reset) of this process, in kB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))


def measure_step(snn_path: str, objective: str, mode: str, args) -> None:
    """(Subprocess) time one adversarial finetuning step; print JSON with time and memory.

    Memory: the peak resident set size while the steps run (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs`` just before them) and its growth over the resident size before.
    """
    torch.manual_seed(0)
    snn = load_snn(snn_path)
    x, y = load_dataset(lossless(args), split="train", limit=64).tensors()
    step_objective = finetune_config("pgd", objective, args).build_objective()
    optimizer = torch.optim.SGD(snn.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)
    Path("/proc/self/clear_refs").write_text("5")
    before = memory_kb("VmRSS")
    times = []
    with snn.gradient(mode), threshold_relative(snn) if mode == "bptt" else nullcontext():
        for _ in range(4):
            start = time.perf_counter()
            snn.train()
            out = step_objective(snn, x, y)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    peak = memory_kb("VmHWM")
    print(json.dumps({"seconds": statistics.median(times[1:]), "all_seconds": times,
                      "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - before) / 1024,
                      "threads": torch.get_num_threads()}))  # fmt: skip


def stage_speed(args) -> None:
    target = args.work / "speed.json"
    results = json.loads(target.read_text()) if target.is_file() else {}
    for name in args.sources.split(","):
        for objective in OBJECTIVES:
            for mode in ("ann", "bptt"):
                key = f"{name}/{objective}/{mode}"
                if key in results:
                    continue
                command = [sys.executable, __file__, "--data-dir", str(args.data_dir),
                           "--work", str(args.work), "--attack-steps", str(args.attack_steps),
                           "--measure-step", str(naive_path(name, args)), objective, mode]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                results[key] = json.loads(out.stdout.strip().splitlines()[-1])
                results[key]["load_average"] = os.getloadavg()[0]
                write_json(target, results)
                print(key, results[key], flush=True)


def stage_report(args) -> None:
    evals = {p.stem: json.loads(p.read_text()) for p in sorted((args.work / "eval").glob("*.json"))}
    speed = json.loads((args.work / "speed.json").read_text())
    ann_config = json.loads((args.work / "ann_trades" / "config.json").read_text())
    histories = {
        (n, o): load_snn(run_dir(n, o, args) / "best.safetensors").metadata["finetune"]["history"]
        for n in SOURCES
        for o in OBJECTIVES
    }
    lines = [
        "# Robust finetuning of converted SNNs on CIFAR-10 (CPU scale)",
        "",
        "Produced by `python benchmarks/finetune_cifar10.py` (run from the repository root; "
        f"arguments `--ann-images {args.ann_images} --ann-epochs {args.ann_epochs} "
        f"--ann-attack-steps {args.ann_attack_steps} --train-images {args.train_images} "
        f"--epochs {args.epochs} --attack-steps {args.attack_steps} --test-images "
        f"{args.test_images}`, the defaults) on 2 shared CPU cores, one thread per process.",
        "",
        "## Setup",
        "",
        "- Source ANNs, both the small CNN `resnet2b` (five 3x3 convolutions and a 1x1 shortcut "
        "in two residual blocks, two linear layers, 0.1M parameters, no BatchNorm): "
        "**PGD**, the PGD-trained (eps 2/255) VNN-COMP 2021 model "
        "(`../shared/models/vnncomp_resnet2b_pgd2.pth`); **TRADES**, trained here from scratch "
        "by the benchmark's `ann` stage, i.e. `convertsnn train --config "
        "recipes/cifar10_trades_ann.yaml --arch resnet2b --data ../shared/data/cifar10_jpeg.npz "
        f"--train-images {ann_config['train_images']} --epochs {ann_config['epochs']} "
        f"--attack-steps {ann_config['attack_steps']}` (TRADES beta 6, eps 2/255, "
        f"{ann_config['attack_steps']} KL-PGD steps of 2.5 * eps / steps; SGD lr 0.1, cosine; "
        "10% of the JPEG training images held out for model selection).",
        "- Conversion: `percentile:99.99` thresholds from 512 training images of "
        "`cifar10_lossless_subset.npz`, IF neurons, reset by subtraction, T = 8 (the converter's "
        "defaults).",
        f"- Finetuning: the first {args.train_images} training images of "
        "`../shared/data/cifar10_lossless_subset.npz`, 10% held out for model selection (best "
        f"epoch by held-out PGD-10 accuracy at 2/255), {args.epochs} epochs, batch 64; each "
        "objective's recipe (`recipes/seed001_trades_rfgsm.yaml`, "
        "`recipes/finetune_{pgd_at,trades,mart}.yaml`: SGD lr 1e-3, momentum 0.9, wd 1e-3, "
        "cosine per epoch, crop + flip, all parameters, BPTT with the threshold-relative "
        "triangle surrogate) with the inner attack of pgd-at / trades / mart cut from 10 to "
        f"{args.attack_steps} steps (step 2.5 * eps / steps); trades-rfgsm as in seed 001 (one "
        "RFGSM step, 1/255 + 1/255).",
        f"- Evaluation: the first {args.test_images} test images of "
        "`../shared/data/cifar10_lossless_subset.npz` (pixel-exact). PGD-20 (step 2.5 * eps / 20, "
        "random start) at eps 2/255 and 8/255. For SNNs the gradients are BPTT at T = 8 with the "
        "triangle surrogate g = 1, both on u - theta (the model's own) and threshold-relative "
        "(the training surrogate); a sample counts as robust only if it survives both. The ANN "
        "row is the source network (the SNN's weights with ReLU, BatchNorm folded), attacked "
        "with its exact gradients.",
        "",
        *accuracy_section(evals, histories),
        *speed_section(speed),
    ]
    results = ROOT / "benchmarks" / "results"
    text = "\n".join(lines) + "\n"
    atomic_write(results / "finetune_cifar10.md", lambda tmp: Path(tmp).write_text(text))
    write_json(results / "finetune_cifar10.json", {
        "command": "python benchmarks/finetune_cifar10.py",
        "data": {"ann_training": "cifar10_jpeg.npz:train",
                 "finetuning": "cifar10_lossless_subset.npz:train",
                 "test": "cifar10_lossless_subset.npz:test"},
        "arguments": {k: str(v) for k, v in vars(args).items() if k != "measure_step"},
        "accuracy": evals, "speed": speed,
        "finetune_history": {f"{n}/{o}": h for (n, o), h in histories.items()},
    })  # fmt: skip
    print("wrote", results / "finetune_cifar10.md")


def accuracy_section(evals: dict, histories: dict) -> list[str]:
    """The accuracy table and, per source, the finetuned SNNs against the naive conversion."""
    rows, summary = [], []
    for name, label in SOURCES.items():
        naive = evals[f"{name}_naive_SNN"]
        for model in ("ANN", "naive SNN", *(f"SNN {o}" for o in OBJECTIVES)):
            row = evals[f"{name}_{model.replace(' ', '_')}"]
            objective = model[4:] if model.startswith("SNN ") else None
            shown = {"ANN": "ANN", "naive SNN": "naive conversion, T=8"}.get(
                model, f"finetuned {objective}, T=8")  # fmt: skip
            seconds = sum(r["seconds"] for r in histories[name, objective]) if objective else None
            rows.append([label, shown, *(f"{100 * row[k]:.1f}" for k in ("clean", *EPS)),
                         f"{seconds:.0f}" if seconds else ""])  # fmt: skip
        for key in EPS:
            gains = {o: evals[f"{name}_SNN_{o}"][key] - naive[key] for o in OBJECTIVES}
            above = sum(g > 0 for g in gains.values())
            summary.append(
                f"- {label}, PGD-20 at {key}: naive conversion {100 * naive[key]:.1f}%; "
                + ", ".join(f"{o} {100 * g:+.1f}" for o, g in gains.items())
                + f" points ({above} of {len(gains)} finetuned SNNs above the naive conversion)."
            )
    table = format_table(["source", "model", "clean", "PGD-20 2/255", "PGD-20 8/255",
                          "finetuning s"], rows, markdown=True)  # fmt: skip
    return ["## Accuracy (%) on the 1,000 lossless test images", "", table, "",
            "Robust accuracy of the finetuned SNNs minus the naive conversion's:", "", *summary,
            ""]  # fmt: skip


def speed_section(speed: dict) -> list[str]:
    """Time and memory of one adversarial finetuning step, SNN (T=8) against 8 x ANN."""
    rows = []
    for name, label in SOURCES.items():
        for objective in OBJECTIVES:
            ann, snn = speed[f"{name}/{objective}/ann"], speed[f"{name}/{objective}/bptt"]
            rows.append([label, objective, f"{ann['seconds']:.3f}", f"{8 * ann['seconds']:.3f}",
                         f"{snn['seconds']:.3f}", f"{snn['seconds'] / (8 * ann['seconds']):.2f}",
                         f"{ann['peak_rss_mb']:.0f} / {ann['step_rss_mb']:.0f}",
                         f"{snn['peak_rss_mb']:.0f} / {snn['step_rss_mb']:.0f}"])  # fmt: skip
    table = format_table(["source", "objective", "ANN step s", "8 x ANN s", "SNN T=8 step s",
                          "SNN / (8 x ANN)", "ANN peak / growth MB", "SNN peak / growth MB"],
                         rows, markdown=True)  # fmt: skip
    return [
        "## Speed and memory of one adversarial finetuning step",
        "",
        "Batch 64 CIFAR-10 images, CPU, one thread per process (`OMP_NUM_THREADS=1`), median of "
        "3 steps after a warm-up: inner attack + loss + backward + SGD step, with the benchmark's "
        "settings of each objective. `ANN` is the same step on the same weights in `ann` "
        "gradient mode (ReLU, one time step). Memory: the process's peak resident set size "
        "while the steps run (Linux `VmHWM`, reset just before them) / its growth over the "
        "resident size before the steps. Taken on a shared machine (load average in the JSON), "
        "so timings are noisy.",
        "",
        table,
    ]


if __name__ == "__main__":
    main()
