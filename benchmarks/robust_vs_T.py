"""Where robustness is lost in conversion: robust accuracy of a robust ANN's SNN over T, and the
per-layer growth of adversarial perturbations (issue 15, part 1).

For each model (--models): the ANN's clean and robust accuracy under an evaluation suite
(--suite), then for each T (--timesteps) the SNN converted with each training-free calibration
of --calibrations; the one that classifies the most held-out *training* images correctly (the
--select-images after the calibration images; never a test image) is attacked with the same
suite. Then, at --fidelity-t, the SNNs of --fidelity-calibrations (more or less faithful
conversions at one T). For every attacked SNN the script records

- clean and robust accuracy, and the accuracy on the ANN's adversarial images (transfer);
- per spiking layer (:func:`convertsnn.eval.perturbation.layer_perturbations`) the relative
  perturbation of the SNN's time-averaged output next to the source ANN's activation, on the
  images the suite broke on the SNN, on those it broke on the ANN (transferred), and on random
  corners of the eps-ball (a control without an attack); and the clean conversion error.

Models: ``resnet2b`` (the VNN-COMP PGD ResNet-2B of --models-dir on the lossless CIFAR-10
images, eps 2/255), ``fmnist`` (--fmnist-ann, a PGD-trained ``convertsnn train`` ANN on
Fashion-MNIST, eps 0.1), ``mnist-demo`` (the shipped MNIST demo ANN on MNIST, eps 0.1).
Results go to one entry per model, suite and number of images; rows are saved as they finish
and a rerun with the same settings skips them.

    OMP_NUM_THREADS=1 python benchmarks/robust_vs_T.py --models resnet2b --images 100 \
        --timesteps 4,8,16,32,64 --data-dir ../shared/data --models-dir ../shared/models

Writes benchmarks/results/robust_vs_T.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from convertsnn.convert import convert
from convertsnn.data import load_dataset
from convertsnn.eval.perturbation import layer_perturbations
from convertsnn.eval.report import format_table, write_json
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import get_suite, run_suite
from convertsnn.importers import Preprocessing, load_ann
from convertsnn.snn.serialize import atomic_write, package_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CIFAR = Preprocessing((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), (3, 32, 32), 10)
MODELS = {  # name: (source, arch, preprocessing, data file, eps, eps as written)
    "resnet2b": ("vnncomp_resnet2b_pgd2.pth", "resnet2b", CIFAR,
                 "cifar10_lossless_subset.npz", 2 / 255, "2/255"),
    "fmnist": (None, None, None, "fashion_mnist.npz", 0.1, "0.1"),
    "mnist-demo": (str(ROOT / "convertsnn/assets/mnist_cnn_pgd.safetensors"), None, None,
                   "mnist.npz", 0.1, "0.1"),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet2b", "fmnist"], choices=list(MODELS))
    p.add_argument("--timesteps", default="4,8,16,32,64", help="comma-separated T values")
    p.add_argument("--calibrations", default="biascal:mse,auto")
    p.add_argument("--suite", default="quick")
    p.add_argument("--fidelity-t", type=int, default=8, help="T of the fixed-T fidelity rows")
    p.add_argument(
        "--fidelity-calibrations",
        default="percentile:99.99,mse",
        help="calibrations attacked at --fidelity-t (more or less faithful conversions)",
    )
    p.add_argument("--images", type=int, default=100, help="first N test images")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--select-images", type=int, default=512)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--models-dir", type=Path, default=Path("../shared/models"))
    p.add_argument("--fmnist-ann", default="/work/artifacts/fmnist/ann.safetensors")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "robust_vs_T")
    p.add_argument("--out", type=Path, default=RESULTS / "robust_vs_T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="rewrite md/png from the JSON")
    return p.parse_args(argv)


def images(dataset, limit: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.subset(start, start + limit).tensors()


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def changed(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Indices of the images an attack moved (the ones it broke: the others keep ``x``)."""
    return ((x_adv - x).flatten(1).abs().amax(1) > 0).nonzero().squeeze(1)


def perturbation_rows(snn, x, x_adv) -> dict:
    idx = changed(x, x_adv)
    if not len(idx):
        return {"images": 0, "layers": []}
    rows = layer_perturbations(snn, x[idx], x_adv[idx])
    return {"images": len(idx), "layers": [r.to_dict() for r in rows]}


def suite_result(suite: str, model, x, y, eps: float, seed: int) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(seed)
    result = run_suite(suite, model, x, y, EvalSettings(eps=eps, seed=seed, progress=False))
    summary = {"robust": result.robust, "seconds": result.seconds,
               "runs": [{"run": r.label, "attacked": r.attacked, "broke": r.lowered}
                        for r in result.ensemble.records]}  # fmt: skip
    return summary, result.ensemble.x_adv.detach()


def converted(ann, calib, steps: int, spec: str, x, y, x_sel, y_sel):
    """The SNN for ``spec`` at T = ``steps`` and its accuracies (test, held-out training)."""
    start = time.process_time()
    snn = convert(ann, calib, timesteps=steps, calibration=spec)
    facts = {
        "picked": snn.metadata.get("auto_calibration", {}).get("chosen"),
        "cpu_seconds": time.process_time() - start,
        "heldout": accuracy(snn, x_sel, y_sel),
        "clean": accuracy(snn, x, y),
    }
    return snn, facts


def random_control(snn, x: torch.Tensor, eps: float, seed: int) -> dict:
    """Per-layer perturbations of random corners of the eps-ball (the attack's budget, no
    attack): how much of an adversarial perturbation's growth any perturbation gets."""
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed))
    return perturbation_rows(snn, x, (x + eps * (2 * signs - 1)).clamp(0, 1))


def measure_snn(snn, x, y, eps: float, args, ann_adv: torch.Tensor) -> dict:
    """The suite on ``snn``, its accuracy on the ANN's adversarial images, the per-layer
    perturbations of both sets of adversarial images and of random ones, and the clean
    conversion error."""
    summary, snn_adv = suite_result(args.suite, snn, x, y, eps, args.seed)
    return {
        **summary,
        "transfer": accuracy(snn, ann_adv, y),
        "perturbation_snn_adv": perturbation_rows(snn, x, snn_adv),
        "perturbation_ann_adv": perturbation_rows(snn, x, ann_adv),
        "perturbation_random": random_control(snn, x, eps, args.seed),
        "conversion_error": {
            "images": len(x),
            "layers": [
                {"layer": r.layer, "quantisation": r.quantisation}
                for r in layer_perturbations(snn, x, x)
            ],
        },
    }


def entry_key(name: str, args: argparse.Namespace) -> str:
    """Where a model's results go: one entry per model, suite and number of images."""
    return f"{name} ({args.suite} suite, {args.images} images)"


def benchmark_model(
    name: str, args: argparse.Namespace, document: dict, command: str, save
) -> None:
    source, arch, preprocessing, data, eps, eps_text = MODELS[name]
    if name == "resnet2b":
        source = str(args.models_dir / source)
    if name == "fmnist":
        source = args.fmnist_ann
    settings = {"source": source, "data": data, "eps": eps_text, "images": args.images,
                "suite": args.suite, "calibrations": args.calibrations,
                "calib_images": args.calib_images, "select_images": args.select_images,
                "seed": args.seed}  # fmt: skip
    key = entry_key(name, args)
    entry = document["models"].get(key)
    if entry is None or entry["settings"] != settings:
        entry = document["models"][key] = {"settings": settings, "rows": {}, "fidelity": {}}
    entry["command"] = command
    entry.setdefault("fidelity", {})
    ann = load_ann(source, arch=arch, preprocessing=preprocessing).model.eval()
    train = load_dataset(str(args.data_dir / data), split="train")
    test = load_dataset(str(args.data_dir / data), split="test")
    x, y = images(test, args.images)
    calib = DataLoader(train.subset(0, args.calib_images), batch_size=128)
    x_sel, y_sel = images(train, args.select_images, args.calib_images)
    cache = args.cache_dir / f"{name}_{args.suite}_{args.images}"
    cache.mkdir(parents=True, exist_ok=True)
    ann_adv_file = cache / "ann_adv.pt"
    if "ann" not in entry or not ann_adv_file.exists():
        summary, ann_adv = suite_result(args.suite, ann, x, y, eps, args.seed)
        entry["ann"] = {"clean": accuracy(ann, x, y), **summary}
        atomic_write(ann_adv_file, lambda tmp: torch.save(ann_adv, tmp))
        save()
    ann_adv = torch.load(ann_adv_file, weights_only=True)
    print(f"{name} ANN: clean {entry['ann']['clean']:.3f} robust {entry['ann']['robust']:.3f}")
    for steps in map(int, args.timesteps.split(",")):
        if str(steps) in entry["rows"]:
            continue
        candidates, snns = {}, {}
        for spec in args.calibrations.split(","):
            snns[spec], candidates[spec] = converted(ann, calib, steps, spec, x, y, x_sel, y_sel)
        best = max(candidates, key=lambda s: candidates[s]["heldout"])
        row = {"calibration": best, "candidates": candidates, "clean": candidates[best]["clean"],
               **measure_snn(snns[best], x, y, eps, args, ann_adv)}  # fmt: skip
        entry["rows"][str(steps)] = row
        print(f"{name} T={steps} {best}: clean {row['clean']:.3f} robust {row['robust']:.3f} "
              f"transfer {row['transfer']:.3f} ({row['seconds']:.0f} s)")  # fmt: skip
        save()
    for spec in args.fidelity_calibrations.split(",") if args.fidelity_calibrations else ():
        label = f"{spec} T={args.fidelity_t}"
        if label in entry["fidelity"]:
            continue
        snn, facts = converted(ann, calib, args.fidelity_t, spec, x, y, x_sel, y_sel)
        row = entry["fidelity"][label] = {**facts, **measure_snn(snn, x, y, eps, args, ann_adv)}
        print(f"{name} {label}: clean {row['clean']:.3f} robust {row['robust']:.3f}")
        save()


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def settings_rows(entry: dict) -> list[tuple[str, dict]]:
    """``(label, row)`` for every attacked SNN: the T sweep, then the fixed-T fidelity rows."""
    sweep = sorted(entry["rows"].items(), key=lambda kv: int(kv[0]))
    return [(f"T={t}", row) for t, row in sweep] + [
        (f"`{key}`", row) for key, row in entry.get("fidelity", {}).items()
    ]


def layer_matrix(columns: list[tuple[str, dict]], value) -> str:
    """Layers down, settings across; ``value(layer row)`` in each cell."""
    columns = [(label, pert) for label, pert in columns if pert["images"]]
    if not columns:
        return "(no image was broken)"
    layers = [r["layer"] for r in columns[0][1]["layers"]]
    header = ["layer"] + [f"{label} ({pert['images']} img.)" for label, pert in columns]
    cells = [{r["layer"]: value(r) for r in pert["layers"]} for _, pert in columns]
    return format_table(header, [[n] + [c[n] for c in cells] for n in layers], markdown=True)


def markdown(document: dict) -> str:
    out = ["# Where robustness is lost: robust accuracy and per-layer perturbations vs T", ""]
    out += [document["note"], ""]
    for name, entry in document["models"].items():
        s = entry["settings"]
        out += [f"## {name}", "",
                f"Source `{s['source']}`, first {s['images']} test images of `{s['data']}`, "
                f"L-inf eps {s['eps']}, `{s['suite']}` suite ({get_suite(s['suite']).description}"
                f"). Calibrations tried: `{s['calibrations']}` on the first {s['calib_images']} "
                f"training images; per T the one with the best accuracy on the next "
                f"{s['select_images']} training images is attacked. Rows named by a calibration "
                "are the fixed-T fidelity comparison.", "",
                f"Command: `{entry['command']}`", ""]  # fmt: skip
        ann = entry.get("ann")
        if ann is None:
            continue
        lines = [["ANN", "-", "-", pct(ann["clean"]), pct(ann["robust"]), "-",
                  f"{ann['seconds']:.0f}"]]  # fmt: skip
        for label, row in settings_rows(entry):
            candidates = row.get("candidates", {})
            chosen = row.get("calibration")
            what = ", ".join(f"`{k}` {pct(v['clean'])}" + (f" (picked `{v['picked']}`)"
                             if v["picked"] else "") for k, v in candidates.items())  # fmt: skip
            what = f"`{chosen}` ({what})" if chosen else (f"picked `{row['picked']}`"
                                                          if row.get("picked") else "")  # fmt: skip
            lines.append([f"SNN {label}", what, f"{mean_conversion_error(row):.3f}",
                          pct(row["clean"]), pct(row["robust"]),
                          pct(row["transfer"]), f"{row['seconds']:.0f}"])  # fmt: skip
        header = ["model", "calibration (clean % of each tried)",
                  "clean conversion error (mean over spiking layers)", "clean %", "robust %",
                  "on the ANN's adversarial images %", "suite seconds"]  # fmt: skip
        out += [format_table(header, lines, markdown=True), ""]
        for key, what in (("perturbation_snn_adv", "the images the suite broke on the SNN"),
                          ("perturbation_ann_adv", "the images the suite broke on the ANN "
                           "(transferred; the same images at every T)"),
                          ("perturbation_random", "random corners of the eps-ball (every test "
                           "image; the same budget without an attack)")):  # fmt: skip
            columns = [(label, row[key]) for label, row in settings_rows(entry)]
            out += [f"Growth `snn / ann` of the relative perturbation per layer, on {what}; "
                    "`snn` = `||r(x') - r(x)|| / ||r(x)||` of the SNN's time-averaged output, "
                    "`ann` the same for the source ANN's activation:", "",
                    layer_matrix(columns, lambda r: f"{r['growth']:.2f} ({r['snn']:.2f} / "
                                 f"{r['ann']:.2f})"), ""]  # fmt: skip
        columns = [(label, row["conversion_error"]) for label, row in settings_rows(entry)]
        out += ["Clean conversion error `||r(x) - a(x)|| / ||a(x)||` per layer, on all the "
                "test images:", "",
                layer_matrix(columns, lambda r: f"{r['quantisation']:.3f}"), ""]  # fmt: skip
    out += ["![robust and clean accuracy vs T, per-layer growth](robust_vs_T.png)", ""]
    return "\n".join(out)


def mean_conversion_error(row: dict) -> float:
    """The clean conversion error averaged over the spiking layers (the logits left out)."""
    layers = row["conversion_error"]["layers"][:-1]
    return sum(r["quantisation"] for r in layers) / len(layers)


def plot(document: dict, path: Path) -> None:
    """Per model: accuracy vs T; per-layer growth; per-layer conversion error next to the
    SNN's change under random noise; robust accuracy against the logits' conversion error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [(n, e) for n, e in document["models"].items() if e.get("rows")]
    if not models:
        return
    fig, axes = plt.subplots(len(models), 4, figsize=(20, 4 * len(models)), squeeze=False)
    for (name, entry), (acc, growth, quant, trade) in zip(models, axes, strict=True):
        rows = sorted(entry["rows"].items(), key=lambda kv: int(kv[0]))
        ts = [int(t) for t, _ in rows]
        acc.plot(ts, [100 * r["robust"] for _, r in rows], "o-", color="C3", label="SNN robust")
        acc.plot(ts, [100 * r["clean"] for _, r in rows], "o-", color="C0", label="SNN clean")
        acc.plot(ts, [100 * r["transfer"] for _, r in rows], "x--", color="C2",
                 label="SNN on ANN's adv. images")  # fmt: skip
        acc.axhline(100 * entry["ann"]["robust"], color="C3", ls=":", label="ANN robust")
        acc.axhline(100 * entry["ann"]["clean"], color="C0", ls=":", label="ANN clean")
        acc.set_xscale("log", base=2)
        acc.set(xlabel="T", ylabel="accuracy %", xticks=ts, title=name)
        acc.set_xticklabels([str(t) for t in ts])
        acc.minorticks_off()
        fidelity = entry.get("fidelity", {})
        for i, (key, row) in enumerate(fidelity.items()):
            spec, _, steps = key.rpartition(" T=")
            acc.plot([int(steps)], [100 * row["robust"]], "s", mfc="none", color=f"C{4 + i}",
                     label=f"SNN robust, {spec}")  # fmt: skip
        acc.legend(fontsize=7)
        names: list[str] = []
        for i, (steps, row) in enumerate(rows):
            for key, style in (("perturbation_ann_adv", "o-"), ("perturbation_snn_adv", "x--")):
                pert = row[key]["layers"]
                if pert:
                    names = [r["layer"] for r in pert]
                    growth.plot(range(len(pert)), [r["growth"] for r in pert], style,
                                color=f"C{i}", label=f"T={steps}" if "o" in style else None)  # fmt: skip
            error = row["conversion_error"]["layers"]
            quant.plot(range(len(error)), [r["quantisation"] for r in error], "o-",
                       color=f"C{i}", label=f"T={steps}")  # fmt: skip
            noise = row["perturbation_random"]["layers"]
            quant.plot(range(len(noise)), [r["snn"] for r in noise], "x:", color=f"C{i}")
        for ax, label in ((growth, "perturbation growth snn / ann"),
                          (quant, "relative error / change")):  # fmt: skip
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
            ax.set(ylabel=label, yscale="log")
            ax.legend(fontsize=7)
        growth.set_title("on the ANN's adv. images (solid), the SNN's own (dashed)", fontsize=9)
        growth.axhline(1, color="k", lw=0.5)
        quant.set_title("clean conversion error (solid), SNN's change under random "
                        "eps-noise (dotted)", fontsize=9)  # fmt: skip
        settings = [(f"T={t}", r, "o") for t, r in rows]
        settings += [(k.replace(" T=", "\nT="), r, "s") for k, r in fidelity.items()]
        for label, row, marker in settings:
            error = mean_conversion_error(row)
            trade.plot([error], [100 * row["robust"]], marker, color="C3", mfc="none")
            trade.annotate(label, (error, 100 * row["robust"]), fontsize=7,
                           textcoords="offset points", xytext=(4, 2))  # fmt: skip
        trade.axhline(100 * entry["ann"]["robust"], color="C3", ls=":", label="ANN robust")
        trade.set(xlabel="clean conversion error, mean over the spiking layers",
                  ylabel="SNN robust accuracy %",
                  title="robust accuracy vs fidelity (T sweep: o, calibrations: s)")  # fmt: skip
        trade.title.set_fontsize(9)
        trade.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    json_path = args.out.with_suffix(".json")
    document = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    document["note"] = (
        f"Measured on {platform.machine()} CPU, 1 thread, while other jobs shared the 2 cores "
        "(seconds are rough). Robust accuracy counts clean errors as broken."
    )
    document["versions"] = package_versions()

    owned = [] if args.report_only else [entry_key(name, args) for name in args.models]

    def save() -> None:
        """Write the results, keeping the entries of the models that other runs measure."""
        if json_path.exists():
            on_disk = json.loads(json_path.read_text())["models"]
            mine = {n: document["models"][n] for n in owned if n in document["models"]}
            document["models"] = {**on_disk, **mine}
        write_json(json_path, document)
        atomic_write(args.out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(
            markdown(document)))  # fmt: skip
        plot(document, args.out.with_suffix(".png"))

    if not args.report_only:
        command = "OMP_NUM_THREADS=1 python benchmarks/robust_vs_T.py " + shlex.join(
            sys.argv[1:] if argv is None else argv
        )
        for name in args.models:
            benchmark_model(name, args, document, command, save)
    save()


if __name__ == "__main__":
    main()
