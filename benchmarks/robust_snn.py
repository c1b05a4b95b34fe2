"""Robust SNNs from a robust ANN (issue 15): finetuning objectives compared at equal compute.

One converted SNN is finetuned once per row with the same training images, epochs, batch size,
optimiser, schedule and inner-attack budget (one gradient step of the inner attack per training
step), and every run keeps the epoch with the best held-out quick-suite robust accuracy
(``--select-by quick``). Rows:

- ``ann``: the SNN's source ANN (same weights, ReLU, one step; no training);
- ``naive``: the converted SNN as it is (no training);
- ``seed001``: seed 001's trades-rfgsm (recipes/seed001_trades_rfgsm.yaml, RFGSM random step eps/2);
- ``ard``: ARD from the frozen source ANN (Goldblum et al., AAAI 2020), one PGD step of eps;
- ``rslad``: RSLAD from the frozen source ANN (Zi et al., ICCV 2021), one PGD step of eps;
- ``best``: whichever of ard/rslad reached the higher held-out quick-suite accuracy (or
  ``--best-objective``), with the inner attack drawn from sharper gradient modes (``--modes``)
  and the thresholds at ``--threshold-lr-scale`` times the learning rate.

Each model is then measured on the first ``--test-images`` test images: clean accuracy and the
robust accuracy under ``--suite`` (quick or standard) at ``--eps``, with its binomial standard
error. Finished runs and evaluations are kept in ``--work`` and skipped when the command is run
again (several processes may share it, each with its own ``--rows``). The table is printed and
``--out``.json written; benchmarks/results/robust_snn.md holds the table with the discussion.

CPU scale (Fashion-MNIST; results/robust_snn.md says the exact command and scale):
    OMP_NUM_THREADS=1 python benchmarks/robust_snn.py --snn SNN_T8 --data fashion_mnist.npz \\
        --eps 0.1 --train-images 3000 --epochs 1 --test-images 300 --select-images 100
CIFAR-10 ResNet-2B PGD at full scale on a GPU: see benchmarks/results/robust_snn.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from convertsnn import load_snn
from convertsnn.attacks.gradient_modes import ModelInMode
from convertsnn.cli.options import parse_number
from convertsnn.data import load_dataset
from convertsnn.eval.report import write_json
from convertsnn.eval.settings import EvalSettings, default_eot
from convertsnn.eval.suites import run_suite
from convertsnn.finetune import finetune, load_recipe
from convertsnn.objectives.distill import frozen_source_ann
from convertsnn.snn.serialize import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "seed001_trades_rfgsm.yaml"
MODES = "bptt:sigmoid:20:detach,bptt:rect:0.25:detach,bptr"
LABELS = {
    "ann": "source ANN (same weights, ReLU)",
    "naive": "naive conversion (no finetuning)",
    "seed001": "seed-001 recipe: trades-rfgsm",
    "ard": "ARD from the source ANN",
    "rslad": "RSLAD from the source ANN",
    "best": "distillation + inner attack in sharp gradient modes",
}
TRAINED = ("seed001", "ard", "rslad", "best")


def row_settings(row: str, args: argparse.Namespace, eps: float, best_objective: str) -> dict:
    """The finetuning settings of ``row``: the seed-001 recipe with the common CPU-scale
    overrides, then the row's objective and inner attack (one gradient step for every row)."""
    common = {
        **load_recipe(RECIPE),
        "model": str(args.snn),
        "data": str(args.data),
        "eps": eps,
        "train_images": args.train_images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "val_fraction": args.val_fraction,
        "select_by": "quick",
        "select_images": args.select_images,
        "seed": args.seed,
        "device": args.device,
        "progress": False,
        "out_dir": str(args.work / row),
        "resume": True,
    }
    if args.lr is not None:
        common["lr"] = args.lr
    if row == "seed001":
        return {**common, "alpha": eps / 2}  # RFGSM: random step eps/2, gradient step eps/2
    one_step = {"attack_steps": 1, "alpha": eps, "beta": None}  # the objective's own beta
    if row in ("ard", "rslad"):
        return {**common, **one_step, "objective": row}
    return {**common, **one_step, "objective": best_objective, "attack_gradient": args.modes,
            "threshold_lr_scale": args.threshold_lr_scale}  # fmt: skip


def train_row(row: str, settings: dict, work: Path) -> dict:
    """Finetune (skipped when ``work/row/train.json`` says it finished); the run's facts."""
    done = work / row / "train.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    result = finetune(**settings)
    facts = {
        "settings": {k: v for k, v in settings.items() if k not in ("progress", "resume")},
        "best": str(result.best),
        "best_epoch": result.best_epoch,
        "steps": result.history[-1]["global_step"],
        "seconds": round(time.perf_counter() - started, 1),
        "history": result.history,
    }
    atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(facts, indent=2)))
    return facts


def evaluate_row(row: str, model, x, y, eps: float, args: argparse.Namespace) -> dict:
    """Clean and ``--suite`` robust accuracy on ``(x, y)`` (skipped when already measured)."""
    done = args.work / f"eval_{row}_{args.suite}.json"
    if done.is_file():
        return json.loads(done.read_text())
    settings = EvalSettings(eps, eot=default_eot(model), batch_size=args.eval_batch_size,
                            seed=args.seed, progress=False)  # fmt: skip
    result = run_suite(args.suite, model, x, y, settings)
    n = len(y)
    robust, clean = result.robust, result.ensemble.clean
    facts = {
        "clean": clean,
        "robust": robust,
        "robust_se": math.sqrt(robust * (1 - robust) / n),
        "clean_se": math.sqrt(clean * (1 - clean) / n),
        "images": n,
        "suite": args.suite,
        "eval_seconds": round(result.seconds, 1),
    }
    atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(facts, indent=2)))
    return facts


def pick_distillation(trained: dict[str, dict]) -> str:
    """ard or rslad: higher held-out quick-suite accuracy of the selected epoch, then clean."""

    def key(row: str) -> tuple[float, float]:
        record = trained[row]["history"][trained[row]["best_epoch"] - 1]
        return record["val_quick_acc"], record["val_clean_acc"]

    return max(("ard", "rslad"), key=key)


def report(rows: dict[str, dict], args: argparse.Namespace, best: str) -> str:
    """The results table in markdown."""
    lines = [
        "| row | objective | clean % | robust % (" + args.suite + f", eps {args.eps}) | "
        "SE (points) | held-out quick % (selected epoch) | training steps | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, facts in rows.items():
        ev, tr = facts["eval"], facts.get("train")
        if tr:
            record = tr["history"][tr["best_epoch"] - 1]
            held = f"{100 * record['val_quick_acc']:.1f} (epoch {tr['best_epoch']})"
            objective = tr["settings"]["objective"]
            steps, seconds = str(tr["steps"]), f"{tr['seconds']:.0f}"
        else:
            held, objective, steps, seconds = "-", "-", "-", "-"
        label = LABELS[row] + (f" ({best})" if row == "best" else "")
        lines.append(
            f"| {label} | {objective} | {100 * ev['clean']:.1f} | {100 * ev['robust']:.1f} | "
            f"{100 * ev['robust_se']:.1f} | {held} | {steps} | {seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--snn", type=Path, required=True, help="converted SNN file (not finetuned)"
    )
    parser.add_argument("--data", required=True, help="training images: dataset name or .npz")
    parser.add_argument("--test-data", help="test images (default: the test split of --data)")
    parser.add_argument("--eps", default="0.1", help="L-inf eps of training and evaluation")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--select-images", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, help="learning rate (default: the recipe's, 1e-3)")
    parser.add_argument("--augment", default="none")
    parser.add_argument("--threshold-lr-scale", type=float, default=10.0)
    parser.add_argument(
        "--best-objective",
        choices=("ard", "rslad"),
        help="the best row's objective (default: ard or rslad, whichever the held-out quick "
        "suite prefers; both are then trained)",
    )
    parser.add_argument("--modes", default=MODES, help="the best row's inner-attack gradient modes")
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--suite", default="quick", choices=("quick", "standard"))
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--rows", default=",".join(LABELS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("runs/robust_snn"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/robust_snn")
    args = parser.parse_args()
    eps = parse_number(args.eps, "eps")
    command = "python benchmarks/robust_snn.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    wanted = args.rows.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    test = load_dataset(args.test_data or args.data, "test", limit=args.test_images)
    x, y = test.images.float().div(255).to(args.device), test.labels.to(args.device)

    trained: dict[str, dict] = {}
    best = ""
    picking = "best" in wanted and args.best_objective is None
    for row in TRAINED:  # best needs ard and rslad (trained here or read from --work)
        if row not in wanted and not (row in ("ard", "rslad") and picking):
            continue
        if row == "best":
            best = args.best_objective or pick_distillation(trained)
        trained[row] = train_row(row, row_settings(row, args, eps, best), args.work)
        print(f"{row}: trained in {trained[row]['seconds']} s", flush=True)

    snn = load_snn(args.snn, args.device)
    models = {"ann": ModelInMode(frozen_source_ann(snn), "ann"), "naive": snn}
    rows: dict[str, dict] = {}
    for row in LABELS:
        if row not in wanted:
            continue
        model = models.get(row) or load_snn(trained[row]["best"], args.device)
        rows[row] = {"eval": evaluate_row(row, model, x, y, eps, args), "train": trained.get(row)}
        ev = rows[row]["eval"]
        print(f"{row}: clean {100 * ev['clean']:.1f} %, robust {100 * ev['robust']:.1f} %",
              flush=True)  # fmt: skip

    table = report(rows, args, best)
    print(table)
    write_json(args.out.with_suffix(".json"), {"command": command, "best_distillation": best,
                                               "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
