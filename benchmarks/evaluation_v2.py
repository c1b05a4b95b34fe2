"""Evaluation v2 benchmark: the suites against outside attacks, per sample, with their cost.

For one SNN file, the first ``--images`` test images and each ``--eps`` it measures, on the same
samples, per-sample correctness (a sample counts only if it is classified correctly after the
attack; clean errors count as broken) and wall time of:

- ``pgd20``: one PGD-20 run in the model's own gradient mode (the cost baseline);
- the new suites (``--suites``, default ``quick standard``; ``full`` and ``s001`` take the same
  flag), with the more-steps run they end with, without the other sanity checks;
- the old suites (``--old-suites``) from the git revision ``--old-rev`` (default: the last
  revision before evaluation v2), run in a subprocess on that revision's package;
- outside attacks: pyautoattack ``standard`` and torchattacks PGD-100 / APGD-CE / APGD-DLR on
  the SNN in its own gradient mode, and an **independent attack** written here without
  ``convertsnn.attacks``: its own IF simulation read from the saved file (graphs of
  Normalize / Conv2d / Linear / AvgPool2d / Flatten / IFNeuron modules, residual additions and
  flatten), its own sigmoid surrogate on
  ``(u - theta) / theta`` with the reset detached, PGD-100 with 2 restarts, step eps/4, keeping
  the first adversarial point found;
- ``union``: the per-sample worst case of the outside attacks.

``--outside-from FILE.json`` takes the outside attacks' per-sample results from an earlier run
of the same model (first images, same eps) instead of running them again, e.g. to add the
costly ``s001`` suite on the first 100 of 500 images.

Targets (issue 14): ``standard`` <= every outside attack + 0.5 point and <= their union + 1;
``full`` <= the union; cost of ``standard`` <= 20x PGD-20, ``quick`` <= 5x. Run from the
repository root; results go to ``--results``.{json,md}::

    python benchmarks/evaluation_v2.py --snn model_zoo/mnist_cnn_pgd_snn_t8.safetensors \\
        --data convertsnn/assets/mnist_sample.npz --images 100 --eps 0.1 -T 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

# --- the independent attack: nothing from convertsnn.attacks, only the saved file ----------


# the graph functions the independent simulation reads (a residual sum, flatten)
FUNCTIONS = {"operator.add": lambda a, b: a + b, "flatten": lambda a, d=1: a.flatten(d)}


class IndependentSNN(torch.nn.Module):
    """The IF SNN of a convertsnn file, simulated from its tensors and graph JSON alone.

    Direct input coding, reset by subtraction, membrane starting at ``v_init * theta``, output
    ``theta * spikes`` (burst neurons: up to K spikes per step; a population of K members:
    member k from ``(k + 1/2) / K * theta``, their mean passed on); the graph's nodes are evaluated in order (modules, residual additions,
    flatten), all T steps folded into the batch; readout = mean of the last layer over T (or
    over steps D..T-1 for a ``delay:D`` readout). Backward: sigmoid surrogate of slope
    ``slope`` on ``(u - theta) / theta`` (theta detached), reset detached."""

    def __init__(self, path: str, timesteps: int | None, slope: float = 20.0) -> None:
        super().__init__()
        with safe_open(path, framework="pt") as handle:
            document = json.loads(handle.metadata()["convertsnn"])
        self.tensors = load_file(path)
        self.timesteps = timesteps or document["timesteps"]
        readout = document.get("readout", "mean")
        self.delay = int(readout.partition(":")[2]) if readout.startswith("delay:") else 0
        self.slope = slope
        self.modules_config = document["graph"]["modules"]
        self.nodes = document["graph"]["nodes"]
        for name, module in self.modules_config.items():
            config = module["config"]
            if module["type"] == "IFNeuron" and (
                config.get("signed") or config["leak"] != 1 or config["reset"] != "subtract"
            ):
                raise SystemExit(
                    f"the independent attack simulates IF neurons (binary or burst) with reset "
                    f"by subtraction only; {name} is {config}"
                )
        for node in self.nodes:
            if node["op"] in ("call_function", "call_method"):
                if node["target"] not in FUNCTIONS:
                    raise SystemExit(f"the independent attack does not read {node['target']}")

    def spike(self, u: torch.Tensor, theta: torch.Tensor, burst: int) -> torch.Tensor:
        """Forward: ``clamp(floor(u / theta), 0, burst)`` spikes (a step at theta for binary
        neurons); backward: the sigmoid surrogate around the first threshold."""
        if burst == 1:
            hard = (u.detach() - theta.detach() >= 0).to(u.dtype)
        else:
            hard = (u.detach() / theta.detach()).floor().clamp(0, burst)
        soft = torch.sigmoid(self.slope * (u - theta) / theta.detach())
        return hard + (soft - soft.detach())

    def module(self, name: str, x: torch.Tensor) -> torch.Tensor:
        p, kind = self.tensors, self.modules_config[name]["type"]
        config, key = self.modules_config[name]["config"], f"body.{name}"
        if kind == "Normalize":
            shape = (1, -1, 1, 1)
            return (x - p[f"{key}.mean"].view(shape)) / p[f"{key}.std"].view(shape)
        if kind == "Conv2d":
            return F.conv2d(x, p[f"{key}.weight"], p.get(f"{key}.bias"), config["stride"],
                            config["padding"], config["dilation"], config["groups"])  # fmt: skip
        if kind == "Linear":
            return F.linear(x, p[f"{key}.weight"], p.get(f"{key}.bias"))
        if kind == "AvgPool2d":
            return F.avg_pool2d(x, config["kernel_size"], config["stride"], config["padding"])
        if kind == "Flatten":
            return x.flatten(1)
        if kind == "IFNeuron":
            theta = p[f"{key}.threshold"].clamp(min=config["min_threshold"])
            if theta.dim() == 1:
                theta = theta.view(1, -1, *([1] * (x.dim() - 2)))
            seq = x.view(self.timesteps, -1, *x.shape[1:])
            k = config.get("population", 1)
            starts = [(j + 0.5) / k for j in range(k)] if k > 1 else [config["v_init"]]
            members = []
            for start in starts:
                u = torch.zeros_like(seq[0]) + start * theta
                out = []
                for current in seq:
                    u = u + current
                    s = self.spike(u, theta, config.get("burst", 1))
                    u = u - s.detach() * theta
                    out.append(s * theta)
                members.append(torch.stack(out))
            return torch.stack(members).mean(0).flatten(0, 1)
        raise SystemExit(f"the independent attack does not read {kind} layers")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        values = {}

        def read(arg):
            return values[arg["$node"]] if isinstance(arg, dict) and "$node" in arg else arg

        for node in self.nodes:
            args = [read(a) for a in node["args"]["$tuple"]]
            if node["op"] == "placeholder":
                x = images.unsqueeze(0).expand(self.timesteps, *images.shape).flatten(0, 1)
            elif node["op"] == "call_module":
                x = self.module(node["target"], args[0])
            elif node["op"] == "output":
                x = args[0]
            else:
                x = FUNCTIONS[node["target"]](*args)
            values[node["name"]] = x
        return x.view(self.timesteps, -1, *x.shape[1:])[self.delay :].mean(0)


def independent_pgd(model, x, y, eps, steps=100, restarts=2, batch_size=100):
    """PGD (CE, step eps/4, random start) on ``model``, which also judges every iterate; keeps
    the first adversarial point per sample (else the clean image). Returns the points."""
    points = x.clone()
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        found = torch.zeros(len(xb), dtype=torch.bool)
        best = xb.clone()
        for _ in range(restarts):
            adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(steps):
                adv.requires_grad_(True)
                logits = model(adv)
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, yb), adv)
                with torch.no_grad():
                    fooled = (logits.argmax(1) != yb) & ~found
                    best[fooled], found = adv[fooled], found | fooled
                    adv = (xb + (adv + eps / 4 * grad.sign() - xb).clamp(-eps, eps)).clamp(0, 1)
        points[start : start + batch_size] = best
    return points


# --- reference libraries ---------------------------------------------------------------------


def outside_library_attacks(snn, x, y, eps, batch_size) -> dict[str, tuple[torch.Tensor, float]]:
    import torchattacks
    from pyautoattack import AutoAttack

    from convertsnn.attacks.gradient_modes import ModelInMode

    model = ModelInMode(snn, "native").eval()
    out = {}
    makers = {
        "torchattacks PGD-100": lambda: torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 100,
                                                          steps=100, random_start=True),
        "torchattacks APGD-CE": lambda: torchattacks.APGD(model, eps=eps, loss="ce", steps=100),
        "torchattacks APGD-DLR": lambda: torchattacks.APGD(model, eps=eps, loss="dlr", steps=100),
    }  # fmt: skip
    for name, make in makers.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        attack = make()
        adv = torch.cat([attack(x[i : i + batch_size], y[i : i + batch_size])
                         for i in range(0, len(x), batch_size)])  # fmt: skip
        out[name] = (judge(snn, adv, y), time.perf_counter() - start)
    start = time.perf_counter()
    adversary = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=0, device="cpu")
    adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    out["pyautoattack standard"] = (judge(snn, adv, y), time.perf_counter() - start)
    return out


def suite_details(result) -> dict:
    """Which run broke each image (``None``: survives), the runs, the families (``s001``) and
    the suite's own image-pass cost."""
    ensemble = result.ensemble
    labels = [r.label for r in ensemble.records]
    return {
        "broken_by": [labels[b] if b >= 0 else None for b in ensemble.breaker.tolist()],
        "runs": [
            {"label": r.label, "attacked": r.attacked, "lowered": r.lowered, "seconds": r.seconds}
            for r in ensemble.records
        ],
        "families": {g: float((c > 0).float().mean()) for g, c in ensemble.groups.items()}
        if len(ensemble.groups) > 1
        else {},
        "pgd20_ratio_passes": result.cost()["pgd20_ratio"],
    }


def judge(snn, adv, y) -> torch.Tensor:
    with torch.no_grad():
        return snn(adv).argmax(1) == y


# --- the old suites, from git history ------------------------------------------------------

OLD_REV = "c6bbfdb1f8e8a0fd708e538af1eb129d086df1cc"  # the last revision before evaluation v2
OLD_RUNNER = """
import json, sys, time, torch
import convertsnn
assert convertsnn.__file__.startswith(sys.argv[1]), convertsnn.__file__
from convertsnn.eval.suites import run_suite
from convertsnn.eval.sanity import run_checks
from convertsnn.snn.serialize import load_snn
torch.set_num_threads(1)
snn = load_snn(sys.argv[2]); snn.timesteps = int(sys.argv[3])
data = torch.load(sys.argv[4], weights_only=True)
x, y, eps = data["x"], data["y"], float(sys.argv[5])
out = {}
for name in sys.argv[6].split(","):
    start = time.perf_counter()
    result = run_suite(name, snn, x, y, eps, progress=False)
    run_checks(snn, x, y, result)  # the old more-steps check lived here and counted
    out[name] = {"correct": (result.ensemble.correct > 0).tolist(),
                 "seconds": time.perf_counter() - start}
print(json.dumps(out))
"""


def old_suites(rev, snn_path, timesteps, x, y, eps, names) -> dict[str, tuple[torch.Tensor, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "convertsnn"], check=True,
                                 capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        torch.save({"x": x, "y": y}, Path(tmp) / "data.pt")
        result = subprocess.run(
            [sys.executable, "-c", OLD_RUNNER, tmp, str(Path(snn_path).resolve()),
             str(timesteps), str(Path(tmp) / "data.pt"), str(eps), ",".join(names)],
            check=True, capture_output=True, text=True, cwd=tmp,
            env={"PYTHONPATH": tmp, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    return {f"old {k}": (torch.tensor(v["correct"]), v["seconds"]) for k, v in parsed.items()}


# --- main ----------------------------------------------------------------------------------


def parse_eps(text: str) -> float:
    return float(Fraction(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snn", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", nargs="+", default=["0.1"])
    parser.add_argument("-T", "--timesteps", type=int, default=None)
    parser.add_argument("--suites", nargs="*", default=["quick", "standard"])
    parser.add_argument("--old-suites", nargs="*", default=["quick"])
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--no-libraries", action="store_true")
    parser.add_argument("--outside-from", default=None,
                        help="reuse the outside attacks of this earlier results JSON (same "
                        "model, T, eps; at least as many images) instead of running them")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--results", default="benchmarks/results/evaluation_v2")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from convertsnn.attacks.ensemble import Run, WorstCase
    from convertsnn.data import load_dataset
    from convertsnn.eval.settings import EvalSettings
    from convertsnn.eval.suites import native_mode, run_suite
    from convertsnn.snn.serialize import load_snn

    snn = load_snn(args.snn)
    if args.timesteps:
        snn.timesteps = args.timesteps
    x, y = load_dataset(args.data, split="test", limit=args.images).tensors()
    old_rev = args.old_rev
    document = {"command": " ".join(map(shlex.quote, ["python", *sys.argv])), "model": args.snn,
                "timesteps": snn.timesteps, "images": len(x), "native_mode": native_mode(snn),
                "old_rev": old_rev, "machine": f"{platform.machine()}, CPU, 1 thread",
                "load_average": [os.getloadavg()[0]], "results": {}}  # fmt: skip
    for eps_text in args.eps:
        eps = parse_eps(eps_text)
        rows: dict[str, tuple[torch.Tensor, float]] = {}
        torch.manual_seed(0)
        start = time.perf_counter()
        settings = EvalSettings(eps, batch_size=args.batch_size, progress=False)
        base = WorstCase(snn, settings)
        pgd = base.run(x, y, [Run.of("pgd", native_mode(snn), steps=20)])
        rows["PGD-20 [native] (cost baseline)"] = (pgd.correct > 0, time.perf_counter() - start)
        suites: dict[str, dict] = {}
        for name in args.suites:
            start = time.perf_counter()
            result = run_suite(name, snn, x, y, settings)
            rows[f"new {name}"] = (result.ensemble.correct > 0, time.perf_counter() - start)
            suites[f"new {name}"] = suite_details(result)
        if args.old_suites:
            try:
                rows.update(
                    old_suites(old_rev, args.snn, snn.timesteps, x, y, eps, args.old_suites)
                )
            except subprocess.CalledProcessError as error:  # e.g. a file the old code cannot read
                reason = (error.stderr or "").strip().splitlines()[-1:] or ["no message"]
                print(f"old suites skipped: revision {old_rev} could not run them ({reason[0]})")
        independent = IndependentSNN(args.snn, snn.timesteps)
        with torch.no_grad():
            agree = (independent(x).argmax(1) == snn(x).argmax(1)).float().mean().item()
        baseline = rows["PGD-20 [native] (cost baseline)"][1]
        table = {name: {"robust": float(c.float().mean()), "seconds": s,
                        "cost_vs_pgd20": s / baseline, "correct": c.int().tolist()}
                 for name, (c, s) in rows.items()}  # fmt: skip
        if args.outside_from:
            table.update(reused_outside(args.outside_from, document, eps_text))
        else:
            outside: dict[str, tuple[torch.Tensor, float]] = {}
            torch.manual_seed(0)
            start = time.perf_counter()
            points = independent_pgd(independent, x, y, eps, batch_size=args.batch_size)
            outside["independent PGD-100x2 (sigmoid 20, detached)"] = (
                judge(snn, points, y),  # its points, judged on the model itself
                time.perf_counter() - start,
            )
            if not args.no_libraries:
                outside.update(outside_library_attacks(snn, x, y, eps, args.batch_size))
            union = torch.stack([c for c, _ in outside.values()]).all(0)
            outside["union of outside attacks"] = (union, sum(s for _, s in outside.values()))
            table.update({name: {"robust": float(c.float().mean()), "seconds": s,
                                 "cost_vs_pgd20": s / baseline, "correct": c.int().tolist()}
                          for name, (c, s) in outside.items()})  # fmt: skip
        document["results"][eps_text] = {
            "independent_agrees_with_snn": agree,
            "rows": table,
            "suites": suites,
        }
        document["load_average"].append(os.getloadavg()[0])
        write_results(Path(args.results), document)  # after every eps: long runs keep their rows
    print(report(document))


def reused_outside(path: str, document: dict, eps_text: str) -> dict[str, dict]:
    """The outside attacks' rows of an earlier results JSON of the same model, T and eps, cut
    to this run's first images; seconds and cost stay those measured there, on its images."""
    source = json.loads(Path(path).read_text())
    same = all(source[k] == document[k] for k in ("model", "timesteps"))
    if not same or source["images"] < document["images"] or eps_text not in source["results"]:
        raise SystemExit(f"{path} is not a run of this model and T at eps {eps_text} on at "
                         f"least {document['images']} images")  # fmt: skip
    note = f" (from the {source['images']}-image run)"
    out = {}
    for name, row in source["results"][eps_text]["rows"].items():
        if name.startswith(("new", "old", "PGD-20")):
            continue
        correct = row["correct"][: document["images"]]
        out[name + note] = {**row, "robust": sum(correct) / len(correct), "correct": correct}
    return out


def write_results(path: Path, document: dict) -> None:
    from convertsnn.snn.serialize import atomic_write

    text = json.dumps(document, indent=2)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))
    markdown = report(document)
    atomic_write(path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown))


def timing_note(document: dict) -> str:
    """How loaded the machine was while the times were taken (1-minute load average at the
    start and after each eps; about 1 is this benchmark alone on its thread)."""
    loads = document.get("load_average")
    if loads is None:  # results written before the load average was recorded
        return document.get("timing", "Load average not recorded: read the cost ratios as rough.")
    busy = max(loads) > 1.5
    return (
        f"1-minute load average {', '.join(f'{v:.1f}' for v in loads)} on "
        f"{os.cpu_count()} cores (start, after each eps): "
        + (
            "other jobs shared the CPU, read the cost ratios as rough."
            if busy
            else "nothing else ran."
        )
    )


def report(document: dict) -> str:
    lines = [
        "# Evaluation v2: suites vs outside attacks",
        "",
        f"Command: `{document['command']}`",
        "",
        f"Model `{document['model']}` at T = {document['timesteps']}, first "
        f"{document['images']} test images, native mode `{document['native_mode']}`; old suites "
        f"from `{document['old_rev'][:10]}`; {document['machine']}. {timing_note(document)}",
        "",
    ]
    for eps, entry in document["results"].items():
        rows = entry["rows"]
        lines += [f"## eps = {eps}", "",
                  f"The independent simulation agrees with the SNN's prediction on "
                  f"{100 * entry['independent_agrees_with_snn']:.1f}% of the clean images.", "",
                  "| evaluation | robust % | seconds | cost / PGD-20 |", "|---|---|---|---|"]  # fmt: skip
        for name, row in rows.items():
            lines.append(f"| {name} | {100 * row['robust']:.1f} | {row['seconds']:.0f} | "
                         f"{row['cost_vs_pgd20']:.1f}x |")  # fmt: skip
        outside = [n for n in rows if not n.startswith(("new", "old", "PGD-20", "union"))]
        best = min(rows[n]["robust"] for n in outside)
        union = next(r["robust"] for n, r in rows.items() if n.startswith("union"))
        lines.append("")
        for name in (n for n in rows if n.startswith("new")):
            robust = rows[name]["robust"]
            lines.append(f"- {name}: {100 * (robust - best):+.1f} points vs the best outside "
                         f"attack, {100 * (robust - union):+.1f} vs their union.")  # fmt: skip
            families = entry.get("suites", {}).get(name, {}).get("families", {})
            if families:
                lines.append("  Per family: " + ", ".join(f"{g} {100 * r:.1f} %"
                                                          for g, r in families.items()) + ".")  # fmt: skip
            lines.append("  " + disagreement(rows, name, outside))
        lines.append("")
    return "\n".join(lines)


def disagreement(rows: dict, name: str, outside: list[str]) -> str:
    """Per sample: the images ``name`` leaves standing that outside attacks broke (grouped by
    which of them did), and the images it breaks that all of them missed."""
    kept = rows[name]["correct"]
    union = next(r["correct"] for n, r in rows.items() if n.startswith("union"))
    missed: dict[str, list[int]] = {}
    for i, (k, u) in enumerate(zip(kept, union, strict=True)):
        if k and not u:
            who = " + ".join(n.split(" (from")[0] for n in outside if not rows[n]["correct"][i])
            missed.setdefault(who, []).append(i)
    extra = sum(1 for k, u in zip(kept, union, strict=True) if u and not k)
    detail = "; ".join(f"{len(v)} by {who} (images {', '.join(map(str, v))})"
                       for who, v in missed.items())  # fmt: skip
    total = sum(len(v) for v in missed.values())
    return (
        f"Per image: it leaves {total} standing that outside attacks broke"
        f"{': ' + detail if detail else ''}; it breaks {extra} that all of them missed."
    )


if __name__ == "__main__":
    main()
