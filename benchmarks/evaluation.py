"""Robustness evaluation benchmark: suites vs external attacks on one SNN, and their cost.

For one converted SNN and the first ``--images`` test images it measures, on the same samples:
clean accuracy; one PGD-20 run (BPTT with the model's surrogate; the cost baseline); the
``quick``, ``standard`` and ``full`` suites (per-sample worst case, with sanity checks);
pyautoattack ``standard`` on the SNN in the model's own gradient mode; torchattacks PGD-100
(step 2.5 eps/100, random start) in the same mode. It checks that ``full`` is at or below the lowest
external number and reports the ``full`` / PGD-20 wall-time ratio. Sweeps of accuracy vs eps and
vs T use the ``quick`` suite on the first ``--sweep-images`` images.

Run from the repository root, one model per call; results of all models are merged into
``--results``.{json,md} (+ PNGs). A rerun skips parts already in the JSON; suites resume from
``--state``:

    python benchmarks/evaluation.py --name cifar10-resnet2b --snn r2b.safetensors \\
        --data ../shared/data/cifar10_lossless_subset.npz --eps 2/255
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import torch

from convertsnn.attacks.ensemble import Run, WorstCase
from convertsnn.data import load_dataset
from convertsnn.eval import plots
from convertsnn.eval.autoattack import run_autoattack
from convertsnn.eval.report import flags_text, format_table, runs_table
from convertsnn.eval.robustness import evaluate_robustness
from convertsnn.eval.sanity import run_checks
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.state import StateDir
from convertsnn.eval.suites import SUITES, native_mode, run_suite
from convertsnn.snn.serialize import atomic_write, load_snn, package_versions


def torchattacks_pgd(model, x, y, eps, steps, batch_size) -> float:
    """Robust accuracy under torchattacks PGD (step 2.5 eps/steps as Madry et al., random
    start; torchattacks returns the last iterate), attacking the clean-correct samples."""
    import torchattacks

    alpha = 2.5 * eps / steps
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        if ok.any():
            x_adv = attack(xb[ok], yb[ok])
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == yb[ok]).sum())
    return correct / len(x)


def save(path: Path, results: dict) -> None:
    text = json.dumps(results, indent=2, default=lambda o: vars(o))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))


def model_section(name: str, entry: dict) -> list[str]:
    """The Markdown section of one model."""
    parts = entry["parts"]
    eps = entry["eps"]
    mode = entry["native_mode"]
    lines = [["clean", f"{100 * entry['clean']:.2f}", "-", ""]]

    def add(key, label, note=""):
        if key in parts:
            p = parts[key]
            lines.append([label, f"{100 * p['robust']:.2f}", f"{p['seconds']:.0f}", note])

    add("pgd20", f"PGD-20 [{mode}] (ours)", "cost baseline")
    for suite in SUITES:
        if suite in parts:
            p = parts[suite]
            raised = [f["check"] for f in p["flags"] if f["raised"]]
            note = f"+ sanity checks {p['sanity_seconds']:.0f} s" + (
                f"; flags: {', '.join(raised)}" if raised else "; no flags"
            )
            if suite == "full" and "pgd20" in parts:
                note += f"; {p['seconds'] / parts['pgd20']['seconds']:.0f}x PGD-20"
            lines.append([f"suite `{suite}`", f"{100 * p['robust']:.2f}",
                          f"{p['seconds']:.0f}", note])  # fmt: skip
    add("autoattack", f"pyautoattack standard [{mode}]",
        "; ".join(parts.get("autoattack", {}).get("warnings", [])) or "no AutoAttack warnings")  # fmt: skip
    add(
        "torchattacks_pgd100",
        f"torchattacks PGD-100 [{mode}]",
        "step 2.5 eps/100, random start, last iterate",
    )
    out = [
        f"## {name}",
        "",
        f"- SNN: `{entry['snn']}` (T={entry['timesteps']}, encoder {entry['encoder']})",
        f"- Data: `{entry['data']}`, first {entry['images']} test images; L-inf eps = "
        f"{entry['eps_text']} ({eps:.5f}); EOT draws {entry['eot']}",
        f"- SNN made by: `{entry.get('snn_command') or 'not recorded'}`",
        f"- Command: `{entry['command']}`",
        "",
        format_table(["evaluation", "robust accuracy %", "wall s", "notes"], lines, True),
        "",
    ]
    external = [parts[k]["robust"] for k in ("autoattack", "torchattacks_pgd100") if k in parts]
    if "full" in parts and external:
        ok = parts["full"]["robust"] <= min(external)
        out += [f"**Check: `full` ({100 * parts['full']['robust']:.2f}%) <= lowest external "
                f"number ({100 * min(external):.2f}%): {'yes' if ok else 'NO'}.**", ""]  # fmt: skip
    if "full" in parts and "pgd20" in parts:
        ratio = parts["full"]["seconds"] / parts["pgd20"]["seconds"]
        out += [f"Cost: the `full` suite took {parts['full']['seconds']:.0f} s on these "
                f"{entry['images']} images, {ratio:.1f}x one PGD-20 run "
                f"({parts['pgd20']['seconds']:.0f} s); its sanity checks took another "
                f"{parts['full']['sanity_seconds']:.0f} s.", ""]  # fmt: skip
    for suite in ("full", "standard"):
        if suite in parts:
            p = parts[suite]
            ranked = ", ".join(f"{s['mode']} ({s['broken']})" for s in p["probe"])
            out += [f"### `{suite}` suite, runs grouped by attack", "",
                    runs_table(p, markdown=True, per_run=False), ""]  # fmt: skip
            if ranked:
                out += [f"Probe ranking (PGD-10 breaks on {entry['probe']} samples): {ranked}.", ""]
            out += ["Sanity checks:", "", flags_text(p["flags"], markdown=True), ""]
            break
    out += [f"![{img}]({img})" for img in entry.get("images_png", [])]
    return [*out, ""]


def write_markdown(path: Path, results: dict) -> None:
    md = [
        "# Robustness evaluation: suites vs external attacks",
        "",
        "Written by `benchmarks/evaluation.py` (one call per model, commands below). Robust "
        "accuracy is over all images (clean errors count as broken). Every number comes from "
        "attacks run on the same SNN and the same images. Suites are described in "
        "docs/evaluation.md; `[mode]` is the gradient mode the attack used.",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), shared CPU "
        "(wall times include contention from other jobs); "
        + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
        "",
    ]
    for name, entry in results.items():
        md += model_section(name, entry)
    text = "\n".join(md)
    atomic_write(path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="section name, e.g. cifar10-resnet2b")
    parser.add_argument("--snn", required=True, help="converted SNN file")
    parser.add_argument("--snn-command", default="", help="how the SNN file was made (recorded)")
    parser.add_argument("--data", required=True, help=".npz with a test split")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument(
        "--parts",
        default="pgd20,full,torchattacks_pgd100,autoattack,quick,standard,sweep_eps,"
        "sweep_timesteps",
        help="what to run, in order (parts already in the results JSON are skipped)",
    )
    parser.add_argument("--sweep-images", type=int, default=200)
    parser.add_argument("--sweep-eps", default="0.5,1,2,4", help="multiples of --eps")
    parser.add_argument("--sweep-timesteps", default="4,8,16")
    parser.add_argument(
        "--recheck",
        default="",
        help="finished suites whose sanity checks to rerun (their runs resume from --state, "
        "the measured wall time is kept)",
    )
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state", default="benchmarks/state/evaluation")
    parser.add_argument("--results", default="benchmarks/results/evaluation")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    results_path = Path(args.results)
    results = (
        json.loads(results_path.with_suffix(".json").read_text())
        if results_path.with_suffix(".json").is_file()
        else {}
    )
    snn = load_snn(args.snn)
    test = load_dataset(args.data, "test", limit=args.images)
    x, y = test.tensors()
    eps = float(Fraction(args.eps))
    eot = 20 if snn.encoder.stochastic else 1
    mode = native_mode(snn)
    entry = results.setdefault(args.name, {"parts": {}})
    entry.update({
        "snn": args.snn, "data": Path(args.data).name, "images": len(x), "eps": eps,
        "eps_text": args.eps, "timesteps": snn.timesteps, "encoder": str(snn.encoder),
        "eot": eot, "native_mode": mode, "probe": 64,
        "command": "python " + shlex.join(sys.argv), "seed": args.seed,
        "snn_command": args.snn_command,
    })  # fmt: skip
    settings = EvalSettings(eps, eot=eot, batch_size=args.batch_size, seed=args.seed)
    entry["clean"] = float(
        WorstCase(snn, replace(settings, progress=False)).run(x, y, []).correct.mean()
    )
    parts = entry["parts"]
    state = StateDir(Path(args.state) / args.name, {k: entry[k] for k in
                     ("snn", "data", "images", "eps", "seed")})  # fmt: skip

    def done(key, value):
        parts[key] = value
        save(results_path, results)
        print(key, {k: v for k, v in value.items() if k in ("robust", "seconds")}, flush=True)

    sweep_x, sweep_y = x[: args.sweep_images], y[: args.sweep_images]

    def pgd20():
        start = time.perf_counter()
        result = WorstCase(snn, settings).run(x, y, [Run.of("pgd", mode, steps=20)])
        return {"robust": result.robust, "seconds": time.perf_counter() - start}

    def suite(name):
        start = time.perf_counter()
        result = run_suite(name, snn, x, y, settings, state=state.slot(name))
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        result.flags = run_checks(snn, x, y, result, settings)
        return {**result.summary(), "seconds": seconds,
                "sanity_seconds": time.perf_counter() - start}  # fmt: skip

    def autoattack():
        return run_autoattack(snn, x, y, settings, "rand" if eot > 1 else "standard").summary()

    def pgd100():
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        robust = torchattacks_pgd(snn, x, y, eps, 100, args.batch_size)
        return {"robust": robust, "seconds": time.perf_counter() - start}

    def sweep(radii, timesteps):
        rows = evaluate_robustness(snn, sweep_x, sweep_y, timesteps, radii, "quick",
                                   replace(settings, sanity=False))  # fmt: skip
        return {"rows": [vars(r) for r in rows], "robust": None, "seconds": None}

    jobs = {
        "pgd20": pgd20,
        "autoattack": autoattack,
        "torchattacks_pgd100": pgd100,
        "sweep_eps": lambda: sweep(
            [eps * float(Fraction(m)) for m in args.sweep_eps.split(",")], [snn.timesteps]
        ),
        "sweep_timesteps": lambda: sweep([eps], [int(t) for t in args.sweep_timesteps.split(",")]),
        **{name: (lambda name=name: suite(name)) for name in SUITES},
    }
    for key in args.parts.split(","):
        if key not in parts:
            done(key, jobs[key]())
    for name in filter(None, args.recheck.split(",")):  # rerun checks, keep measured seconds
        if name in parts:
            done(name, {**suite(name), "seconds": parts[name]["seconds"]})
    folder = results_path.parent
    images = []
    if "sweep_eps" in parts:
        images.append(plots.accuracy_vs_eps(parts["sweep_eps"]["rows"],
                                            folder / f"evaluation_{args.name}_eps.png",
                                            f"{args.name}: quick suite, {len(sweep_x)} images"))  # fmt: skip
    if "sweep_timesteps" in parts:
        images.append(plots.accuracy_vs_timesteps(parts["sweep_timesteps"]["rows"],
                                                  folder / f"evaluation_{args.name}_T.png",
                                                  f"{args.name}: quick suite at eps={args.eps}"))  # fmt: skip
    if "full" in parts:
        images.append(plots.breaks_per_run(parts["full"], folder / f"evaluation_{args.name}_full.png",
                                           f"{args.name}: full suite, breaks per attack / mode"))  # fmt: skip
    entry["images_png"] = [p.name for p in images if p is not None]
    save(results_path, results)
    write_markdown(results_path, results)
    print(f"wrote {results_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
