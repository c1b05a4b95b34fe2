"""The seeds' defences as finetuning options, compared on one converted CIFAR-10 SNN.

One converted SNN (the PGD-trained VNN-COMP ResNet-2B at T=8, converted by the exact
`convertsnn convert` command below) is finetuned with the seed-001 recipe and the same number of
steps for every option, then evaluated the same way:

- ``baseline``: seed 001's trades-rfgsm (the recipe, recipes/seed001_trades_rfgsm.yaml);
- ``sr``: + gradient sparsity regularisation (seed 000), ``--regularizer sparsity:0.001``;
- ``mppd``: + the MS-MPPD regulariser (seed 003), ``--regularizer mppd:1``;
- ``rssnn``: seed 003's RSSNN: ``--objective rssnn-fgsm --eps 4/255 --neuron dlif
  --weight-projection 5e-4 --weight-decay 0``;
- ``rsc``: seed 002's randomised smoothing coding: noise training with distillation,
  ``--objective natural --encoder gaussian:0.25 --regularizer distill:1``;
- ``rsc-at``: the baseline with the Gaussian encoder, ``--encoder gaussian:0.25``.

Stages (each skips finished work; rerun after a kill): ``convert``, ``finetune``, ``speed``
(median time of one training step per option, interleaved), ``eval`` (clean accuracy, accuracy
under random sign noise of L-inf size 8/255, `standard`-suite robust accuracy at 8/255; EOT for
the Gaussian-coded models), ``certify`` (`convertsnn certify` on the Gaussian-coded models),
``report`` (benchmarks/results/objectives_cifar10.{md,json,png} and certify_cifar10.{md,json,png}).

Run from the repository root (about 6 h on 2 shared CPU cores, one thread):
    OMP_NUM_THREADS=1 python benchmarks/objectives_cifar10.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convertsnn import load_snn
from convertsnn.attacks.ensemble import expected_correct
from convertsnn.data import load_dataset
from convertsnn.eval.certify import Certificate, plot_certified_accuracy
from convertsnn.eval.report import format_table, write_json
from convertsnn.eval.robustness import evaluate_robustness
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.state import StateDir
from convertsnn.finetune import FinetuneConfig, finetune, load_recipe, select_parameters
from convertsnn.finetune.projection import project_weights
from convertsnn.finetune.surrogate import threshold_relative
from convertsnn.objectives import get_regularizer, regularized_loss
from convertsnn.snn.dlif import to_dlif
from convertsnn.snn.encoding import parse_encoder
from convertsnn.snn.serialize import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EPS = 8 / 255
SIGMA = 0.25
CONVERT = (
    "convertsnn convert {models}/vnncomp_resnet2b_pgd2.pth --arch resnet2b "
    "--mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616 "
    "--calib {data}/cifar10_lossless_subset.npz -T 8 -o {out}"
)
STAGES = ("convert", "finetune", "speed", "eval", "certify", "report")


@dataclass(frozen=True)
class Option:
    """One finetuning option: what it is, its seed, the flags added to the recipe."""

    label: str
    seed: str
    flags: str
    settings: dict = field(default_factory=dict)


OPTIONS = {
    "baseline": Option("seed-001 baseline: trades-rfgsm", "001", ""),
    "sr": Option("SR: + gradient sparsity", "000", "--regularizer sparsity:0.001",
                 {"regularizers": ["sparsity:0.001"]}),
    "mppd": Option("+ MS-MPPD regulariser", "003", "--regularizer mppd:1",
                   {"regularizers": ["mppd:1"]}),
    "rssnn": Option("RSSNN: DLIF + MS-MPPD + FGSM + AT+Reg", "003",
                    "--objective rssnn-fgsm --eps 4/255 --neuron dlif --weight-projection 5e-4 "
                    "--weight-decay 0",
                    {"objective": "rssnn-fgsm", "eps": 4 / 255, "alpha": None, "beta": None,
                     "neuron": "dlif", "weight_projection": 5e-4, "weight_decay": 0.0}),
    "rsc": Option("RSC: noise training + distillation", "002",
                  f"--objective natural --encoder gaussian:{SIGMA} --regularizer distill:1",
                  {"objective": "natural", "alpha": None, "beta": None,
                   "encoder": f"gaussian:{SIGMA}", "regularizers": ["distill:1"]}),
    "rsc-at": Option("RSC + trades-rfgsm", "002 + 001", f"--encoder gaussian:{SIGMA}",
                     {"encoder": f"gaussian:{SIGMA}"}),
}  # fmt: skip
CERTIFIED = ("rsc", "rsc-at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=ROOT.parent / "shared" / "models")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "objectives_cifar10")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--eot", type=int, default=10)
    parser.add_argument("--noise-draws", type=int, default=5)
    parser.add_argument("--speed-steps", type=int, default=3)
    parser.add_argument("--certify-skip", type=int, default=10)
    parser.add_argument("--certify-n", type=int, default=10_000)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args()
    args.data_dir, args.work = args.data_dir.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for stage in args.stages.split(","):
        print(f"== {stage}", flush=True)
        globals()[f"stage_{stage}"](args)


def lossless(args) -> str:
    return str(args.data_dir / "cifar10_lossless_subset.npz")


def naive_path(args) -> Path:
    return args.work / "r2b.safetensors"


def model_path(name: str, args) -> Path:
    return naive_path(args) if name == "naive" else args.work / name / "last.safetensors"


def convert_command(args) -> str:
    return CONVERT.format(models=args.models_dir, data=args.data_dir, out=naive_path(args))


def stage_convert(args) -> None:
    if not naive_path(args).is_file():
        subprocess.run(convert_command(args).split(), check=True)


def config_for(name: str, args) -> FinetuneConfig:
    """The seed-001 recipe plus the option's flags; no held-out images, so every option runs
    the same number of steps and keeps its last epoch."""
    values = load_recipe(ROOT / "recipes" / "seed001_trades_rfgsm.yaml")
    values.update(model=str(naive_path(args)), data=lossless(args), val_fraction=0.0,
                  train_images=args.train_images, epochs=args.epochs,
                  out_dir=str(args.work / name), resume=True, device="cpu", progress=False)  # fmt: skip
    values.update(OPTIONS[name].settings)
    return FinetuneConfig.from_dict(values)


def stage_finetune(args) -> None:
    for name in OPTIONS:
        start = time.perf_counter()
        result = finetune(config_for(name, args))
        record = result.history[-1]
        print(f"{name}: {record} ({time.perf_counter() - start:.0f} s)", flush=True)


def training_step(config: FinetuneConfig):
    """The SNN and one step of the training loop for ``config`` (as ``finetune`` sets it up:
    encoder, DLIF, BPTT surrogate; objective, regularisers, backward, SGD step, projection)."""
    snn = load_snn(config.model)
    snn.timesteps = config.timesteps or snn.timesteps
    if config.encoder:
        snn.encoder = parse_encoder(config.encoder)
    if config.neuron == "dlif":
        to_dlif(snn)
    snn.set_gradient("bptt", config.surrogate)
    objective = config.build_objective()
    regularizers = [get_regularizer(spec) for spec in config.regularizers]
    for regularizer in regularizers:
        regularizer.setup(snn)
    optimizer = torch.optim.SGD(select_parameters(snn, config.train), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)  # fmt: skip

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        snn.train()
        out = objective(snn, x, y)
        loss = regularized_loss(regularizers, snn, x, y, out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if config.weight_projection:
            project_weights(snn, config.weight_projection)

    return snn, step


def stage_speed(args) -> None:
    """Median seconds of one training step (batch 64) per option; the options take turns, so
    they see the same machine load."""
    target = args.work / "speed.json"
    if target.is_file():
        return
    x, y = load_dataset(lossless(args), split="train", limit=64).tensors()
    steps = {name: training_step(config_for(name, args)) for name in OPTIONS}
    times: dict[str, list[float]] = {name: [] for name in OPTIONS}
    torch.manual_seed(0)
    for repeat in range(args.speed_steps + 1):
        for name, (snn, step) in steps.items():
            with threshold_relative(snn):
                start = time.perf_counter()
                step(x, y)
                if repeat:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
    result = {name: {"seconds": statistics.median(t), "all_seconds": t}
              for name, t in times.items()}  # fmt: skip
    write_json(target, {"threads": torch.get_num_threads(), "batch": 64, "steps": result})
    print(json.dumps(result, indent=1), flush=True)


def noise_accuracy(snn, x, y, eot: int, draws: int) -> float:
    """Mean accuracy under ``x + eps * s`` (random signs ``s``, i.e. a random corner of the
    L-inf ball), clipped to [0, 1], over ``draws`` noise draws (EOT inside each)."""
    total = 0.0
    for draw in range(draws):
        generator = torch.Generator().manual_seed(draw)
        signs = torch.randint(0, 2, x.shape, generator=generator).float() * 2 - 1
        total += float(expected_correct(snn, (x + EPS * signs).clamp(0, 1), y, eot).mean())
    return total / draws


def stage_eval(args) -> None:
    out_dir = args.work / "eval"
    out_dir.mkdir(exist_ok=True)
    x, y = load_dataset(lossless(args), split="test", limit=args.test_images).tensors()
    for name in ("naive", *OPTIONS):
        target = out_dir / f"{name}.json"
        if target.is_file():
            continue
        snn = load_snn(model_path(name, args))
        eot = args.eot if snn.encoder.stochastic else 1
        torch.manual_seed(0)
        start = time.perf_counter()
        noise = noise_accuracy(snn, x, y, eot, args.noise_draws)
        settings = {"model": name, "images": len(x), "eps": EPS, "eot": eot}
        state = StateDir(args.work / "eval_state" / name, settings)
        row = evaluate_robustness(snn, x, y, [snn.timesteps], [EPS], "standard",
                                  EvalSettings(eot=eot, progress=False), include_ann=False,
                                  state=state)[0]  # fmt: skip
        detail = next(iter(row.details.values()))
        result = {**settings, "encoder": str(snn.encoder), "clean": row.clean, "noise": noise,
                  "robust": detail["robust"], "flags": detail["flags"],
                  "runs": detail["runs"], "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        write_json(target, result)
        print(f"{name}: clean {row.clean:.3f} noise {noise:.3f} robust {detail['robust']:.3f} "
              f"({result['seconds']:.0f} s)", flush=True)  # fmt: skip


def certify_command(name: str, args) -> list[str]:
    return ["convertsnn", "certify", str(model_path(name, args)), "--data", lossless(args),
            "--skip", str(args.certify_skip), "--n0", "100", "--n", str(args.certify_n),
            "--alpha", "0.001", "--batch-size", "500", "--device", "cpu",
            "--out", str(args.work / f"certify_{name}.json"),
            "--resume", str(args.work / f"certify_state_{name}")]  # fmt: skip


def stage_certify(args) -> None:
    for name in CERTIFIED:
        if not (args.work / f"certify_{name}.json").is_file():
            subprocess.run(certify_command(name, args), check=True)


def relative(path: str | Path, args) -> str:
    return str(Path(path)).replace(str(args.work), "runs/objectives_cifar10").replace(
        str(args.data_dir), "../shared/data").replace(str(args.models_dir), "../shared/models")  # fmt: skip


def stage_report(args) -> None:
    evals = {n: json.loads((args.work / "eval" / f"{n}.json").read_text())
             for n in ("naive", *OPTIONS)}  # fmt: skip
    speed = json.loads((args.work / "speed.json").read_text())["steps"]
    histories = {n: load_snn(model_path(n, args)).metadata["finetune"]["history"]
                 for n in OPTIONS}  # fmt: skip
    config = config_for("baseline", args)
    steps = histories["baseline"][-1]["global_step"]
    arguments = (f"--train-images {args.train_images} --epochs {args.epochs} --test-images "
                 f"{args.test_images} --eot {args.eot} --noise-draws {args.noise_draws} "
                 f"--speed-steps {args.speed_steps} --certify-skip {args.certify_skip} "
                 f"--certify-n {args.certify_n}")  # fmt: skip
    command = f"OMP_NUM_THREADS=1 python benchmarks/objectives_cifar10.py {arguments}"
    write_objectives_report(evals, speed, histories, config, steps, command, args)
    write_certify_report(command, args)


def write_objectives_report(evals, speed, histories, config, steps, command, args) -> None:
    base = speed["baseline"]["seconds"]
    rows = []
    for name in ("naive", *OPTIONS):
        e = evals[name]
        option = OPTIONS.get(name)
        flags = [f["check"] for f in e["flags"] if f["raised"]]
        rows.append([
            option.label if option else "naive conversion (not finetuned)",
            option.seed if option else "",
            f"`{option.flags}`" if option and option.flags else "",
            e["encoder"], str(e["eot"]),
            f"{100 * e['clean']:.1f}", f"{100 * e['noise']:.1f}", f"{100 * e['robust']:.1f}",
            f"{speed[name]['seconds']:.2f}" if option else "",
            f"{speed[name]['seconds'] / base:.2f}" if option else "",
            ", ".join(flags) or "none",
        ])  # fmt: skip
    header = ["option", "seed", "flags added to the recipe", "encoder", "EOT", "clean",
              "random noise 8/255", "standard 8/255", "step s", "step / baseline",
              "sanity flags"]  # fmt: skip
    lines = [
        "# The seeds' defences as finetuning options (CIFAR-10, CPU scale)",
        "",
        f"Produced by `{command}` (run from the repository root) on 2 shared CPU cores, one "
        "thread. Data: `../shared/data/cifar10_lossless_subset.npz` (training split for "
        "finetuning, test split for evaluation).",
        "",
        "## Setup",
        "",
        f"- One converted SNN for every option: `{relative(convert_command(args), args)}` "
        "(the PGD-trained VNN-COMP ResNet-2B; IF neurons, T = 8).",
        f"- Same budget: every option finetunes it for {steps} steps ({args.epochs} epochs of "
        f"the first {args.train_images} training images, batch {config.batch_size}) with "
        "`recipes/seed001_trades_rfgsm.yaml` (SGD lr 1e-3, momentum 0.9, weight decay 1e-3, "
        "cosine per epoch, crop + flip, all parameters, BPTT with the threshold-relative "
        "triangle surrogate) plus the option's flags, no held-out images "
        "(`--val-fraction 0`): the last epoch is kept.",
        f"- Evaluation on the first {args.test_images} test images: clean accuracy; accuracy "
        f"under random noise of the same L-inf size (each pixel +-8/255 with random sign, "
        f"clipped to [0, 1], mean of {args.noise_draws} draws); robust accuracy under the "
        "`standard` suite of `convertsnn evaluate` at L-inf 8/255 (probe-ranked gradient "
        "modes, FGSM, PGD-20, APGD-CE, APGD-T, transfer from the source ANN, Square-5000, "
        "per-sample worst case, plus the sanity checks' extra runs). Gaussian-coded models "
        f"are evaluated with EOT {args.eot} (accuracy = mean over draws; every gradient "
        f"averaged over {args.eot} draws); deterministic ones with EOT 1. A subset of the "
        "1,000 test images because the suite with EOT is slow on this CPU.",
        "- Step cost: median seconds of one training step (batch 64: inner attack, loss and "
        "regularisers, backward, SGD step, projection) over "
        f"{args.speed_steps} steps after a warm-up, options taking turns in one process.",
        "",
        "## Results (accuracy in %)",
        "",
        format_table(header, rows, markdown=True),
        "",
        "![accuracy per option](objectives_cifar10.png)",
        "",
        *training_lines(histories),
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(RESULTS / "objectives_cifar10.md", lambda tmp: Path(tmp).write_text(text))
    plot_options(evals)
    write_json(RESULTS / "objectives_cifar10.json", {
        "command": command, "convert_command": relative(convert_command(args), args),
        "data": "cifar10_lossless_subset.npz", "options": {n: vars(o) for n, o in OPTIONS.items()},
        "evaluation": evals, "speed": speed, "history": histories,
    })  # fmt: skip
    print("wrote", RESULTS / "objectives_cifar10.md", flush=True)


def training_lines(histories: dict) -> list[str]:
    rows = []
    for name, history in histories.items():
        last = history[-1]
        rows.append([name, f"{last['train_loss']:.3f}", f"{100 * last['train_clean_acc']:.1f}",
                     f"{100 * last['train_adv_acc']:.1f}",
                     f"{sum(r['seconds'] for r in history):.0f}"])  # fmt: skip
    table = format_table(["option", "last-epoch loss", "train clean", "train perturbed",
                          "training s"], rows, markdown=True)  # fmt: skip
    return ["## Training (last epoch, on the training images)", "",
            "`train perturbed` is accuracy on the objective's own perturbed batch (RFGSM, FGSM, "
            "or the clean batch for `natural`).", "", table]  # fmt: skip


def plot_options(evals: dict) -> None:
    from convertsnn.eval.plots import _pyplot, _save

    plt = _pyplot()
    names = ["naive", *OPTIONS]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    for i, (key, label) in enumerate((("clean", "clean"), ("noise", "random noise 8/255"),
                                      ("robust", "standard suite 8/255"))):  # fmt: skip
        ax.bar([j + (i - 1) * width for j in range(len(names))],
               [100 * evals[n][key] for n in names], width, label=label)  # fmt: skip
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title="ResNet-2B SNN (T=8), CIFAR-10")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    _save(fig, RESULTS / "objectives_cifar10.png")


def write_certify_report(command: str, args) -> None:
    documents = {n: json.loads((args.work / f"certify_{n}.json").read_text()) for n in CERTIFIED}
    curves = {f"{n} ({OPTIONS[n].flags})": [Certificate(**c) for c in d["certificates"]]
              for n, d in documents.items()}  # fmt: skip
    first = documents[CERTIFIED[0]]
    plot_certified_accuracy(curves, RESULTS / "certify_cifar10.png",
                            f"sigma {SIGMA} per step, T={first['timesteps']}: sigma_eff "
                            f"{first['sigma_effective']:.3f}")  # fmt: skip
    radii = first["radii"]
    rows = []
    for name, document in documents.items():
        by_radius = {c["radius"]: c["certified_accuracy"] for c in document["curve"]}
        rows.append([name, f"{document['abstained']}", f"{document['seconds']:.0f}",
                     *(f"{100 * by_radius[r]:.1f}" for r in radii)])  # fmt: skip
    header = ["model", "abstained", "seconds", *(f"r={r:g}" for r in radii)]
    commands = [" ".join(relative(part, args) for part in certify_command(n, args))
                for n in CERTIFIED]  # fmt: skip
    lines = [
        "# Certified L2 accuracy of Gaussian-coded SNNs (CIFAR-10, randomised smoothing)",
        "",
        f"Produced by the `certify` stage of `{command}`, i.e.",
        "",
        *(f"    {c}" for c in commands),
        "",
        f"Models: the `rsc` and `rsc-at` options of `objectives_cifar10.md` (the converted "
        f"ResNet-2B, T = {first['timesteps']}, finetuned with the Gaussian encoder, std {SIGMA} "
        "per pixel and per time step). Images: every "
        f"{args.certify_skip}-th test image of `../shared/data/cifar10_lossless_subset.npz` "
        f"({first['images']} images). CERTIFY (Cohen et al. 2019): n0 = {first['n0']} "
        f"selection draws, n = {first['n']} estimation draws, alpha = {first['alpha']}.",
        "",
        "What is certified: the smoothed classifier (majority vote of the SNN over its own "
        "encoder noise) returns the same class for every L2 perturbation of the image (pixels "
        "in [0, 1]) of norm below the radius, with probability 1 - alpha per certificate. "
        f"Noise drawn anew at each of the T steps smooths like noise of std sigma / sqrt(T) = "
        f"{first['sigma_effective']:.4f} drawn once, so radii are sigma_eff * PhiInv(pA) (see "
        "docs/defences.md). Certified accuracy at radius r: share of images classified "
        "correctly with radius >= r (abstentions count as wrong).",
        "",
        "## Certified accuracy (%) against L2 radius",
        "",
        format_table(header, rows, markdown=True),
        "",
        "![certified accuracy against radius](certify_cifar10.png)",
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(RESULTS / "certify_cifar10.md", lambda tmp: Path(tmp).write_text(text))
    write_json(RESULTS / "certify_cifar10.json", {
        "command": command, "certify_commands": commands,
        "data": "cifar10_lossless_subset.npz:test", "results": documents,
    })  # fmt: skip
    print("wrote", RESULTS / "certify_cifar10.md", flush=True)


if __name__ == "__main__":
    sys.exit(main())
