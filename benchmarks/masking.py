"""Why white-box attacks fail on the zoo's finetuned SNNs, and what the suites cost.

Three commands, each on the first ``--images`` test images of ``--data`` at ``--eps``:

- ``diagnose``: input gradients on the correctly classified images in several gradient modes
  (share of zero entries, sign agreement and cosine with the ANN proxy's gradient); the true
  margin change ``z_y - max_{j != y} z_j`` after one signed step along each mode's gradient
  and along random signs; the margin change under tiny Gaussian input noise (is the output
  shattered?);
- ``attacks``: single attacks (``--configs`` JSON: ``[[name, mode, params], ...]``), robust %
  (clean errors count as broken), seconds, and their per-sample union;
- ``suites``: the given suites (more-steps run included, no other sanity checks) next to one
  PGD-20 run in the model's own mode, with seconds and the model's sample-timesteps run
  forward-only (F) and with a gradient (G), and the cost ratio to the PGD-20 run in both.

Results (``--out``) are JSON; benchmarks/results/masking.md quotes them with the command.
Example::

    python benchmarks/masking.py suites --snn zoo:cifar10_resnet2b_pgd_snn_t8_trades_rfgsm \\
        --data /work/shared/data/cifar10_lossless_subset.npz --images 100 --eps 2/255
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction

import torch

from convertsnn.attacks import build_attack
from convertsnn.attacks.base import margin, per_sample_loss
from convertsnn.attacks.gradient_modes import parse_gradient_mode
from convertsnn.data.datasets import load_dataset
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import get_suite, native_mode, run_suite, single_attack_suite
from convertsnn.snn.network import SpikingNetwork
from convertsnn.snn.serialize import load_snn
from convertsnn.zoo import resolve_model_file

DIAGNOSE_MODES = ("ann", "native", "bptt:sigmoid:4", "bptt:sigmoid:20:detach", "bptr",
                  "adaptive", "bptt:triangle:1:abs")  # fmt: skip


def load(args) -> tuple[SpikingNetwork, torch.Tensor, torch.Tensor]:
    snn = load_snn(resolve_model_file(args.snn)).eval()
    if args.timesteps:
        snn.timesteps = args.timesteps
    data = load_dataset(args.data, "test", limit=args.images)
    return snn, data.images.float().div(255), data.labels


def correct_subset(snn, x, y):
    with torch.no_grad():
        ok = snn(x).argmax(1) == y
    return x[ok], y[ok]


def diagnose(snn, x, y, eps: float) -> dict:
    xs, ys = correct_subset(snn, x, y)
    with torch.no_grad():
        m0 = margin(snn(xs), ys)
    out = {"correct": len(xs), "clean_margin_mean": float(m0.mean()), "modes": {}}
    grads = {}
    for spec in DIAGNOSE_MODES:
        spec = native_mode(snn) if spec == "native" else spec
        binding = parse_gradient_mode(spec).bind(snn)
        xi = xs.clone().requires_grad_(True)
        with binding():
            (g,) = torch.autograd.grad(per_sample_loss("ce", snn(xi), ys).sum(), xi)
        grads[spec] = g
        steps = {}
        for t in (0.25, 0.5, 1.0):
            with torch.no_grad():
                m = margin(snn((xs + t * eps * g.sign()).clamp(0, 1)), ys)
            steps[t] = {"margin_change": float((m - m0).mean()), "broken": int((m < 0).sum())}
        out["modes"][spec] = {"zero_entries": float((g == 0).float().mean()),
                              "mean_abs": float(g.abs().mean()), "signed_step": steps}  # fmt: skip
    ref = grads["ann"]
    for spec, g in grads.items():
        nonzero = (g != 0).float()
        agree = ((g.sign() == ref.sign()).float() * nonzero).sum() / nonzero.sum().clamp(min=1)
        cos = torch.nn.functional.cosine_similarity(g.flatten(1), ref.flatten(1)).mean()
        out["modes"][spec].update(sign_agreement_ann=float(agree), cosine_ann=float(cos))
    rand = {}
    for t in (0.25, 0.5, 1.0):
        changes, broken = [], []
        for _ in range(5):
            signs = torch.randint(0, 2, xs.shape).float().mul(2).sub(1)
            with torch.no_grad():
                m = margin(snn((xs + t * eps * signs).clamp(0, 1)), ys)
            changes.append(float((m - m0).mean()))
            broken.append(int((m < 0).sum()))
        rand[t] = {"margin_change": sum(changes) / 5, "broken": sum(broken) / 5}
    out["random_signs"] = rand
    noise = {}
    for scale in (0.01, 0.05, 0.1):
        with torch.no_grad():
            m = margin(snn((xs + scale * eps * torch.randn_like(xs)).clamp(0, 1)), ys)
        noise[scale] = {"abs_margin_change": float((m - m0).abs().mean()),
                        "flipped": int(((m < 0) != (m0 < 0)).sum())}  # fmt: skip
    out["gaussian_noise_times_eps"] = noise
    return out


def attacks(snn, x, y, eps: float, configs: list) -> dict:
    xs, ys = correct_subset(snn, x, y)
    survived, results = torch.ones(len(xs), dtype=torch.bool), {}
    for name, mode, params in configs:
        torch.manual_seed(0)
        attack = build_attack(name, snn, eps, gradient_mode=mode, **params)
        start = time.perf_counter()
        x_adv = attack(xs, ys)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            alive = snn(x_adv).argmax(1) == ys
        survived &= alive
        label = f"{name} [{mode}] {json.dumps(params, sort_keys=True)}"
        results[label] = {"robust": 100 * int(alive.sum()) / len(x), "seconds": seconds}
        print(f"{label:72s} {results[label]['robust']:5.1f} %  {seconds:6.1f} s", flush=True)
    return {"images": len(x), "correct": len(xs), "attacks": results,
            "union": 100 * int(survived.sum()) / len(x)}  # fmt: skip


def suites(snn, x, y, eps: float, names: list[str]) -> dict:
    """Each suite's robust accuracy, wall time and image-passes next to one PGD-20 run's."""
    out = {"images": len(x)}
    start = time.perf_counter()
    pgd20 = single_attack_suite("pgd", {"steps": 20}, native_mode(snn))
    pgd = run_suite(pgd20, snn, x, y, EvalSettings(eps, progress=False, sanity=False))
    base = {"robust": 100 * pgd.robust, "seconds": time.perf_counter() - start,
            "cost": pgd.cost()["forward"] + pgd.cost()["backward"]}  # fmt: skip
    out["pgd20"] = base
    print(f"pgd20 {base}", flush=True)
    for name in names:
        start = time.perf_counter()
        result = run_suite(name, snn, x, y, EvalSettings(eps, progress=False))
        cost = result.cost()
        row = {"robust": 100 * result.robust, "seconds": time.perf_counter() - start,
               "forward": cost["forward"], "backward": cost["backward"],
               "cost": cost["forward"] + cost["backward"],
               "runs": [{"run": r.label, "attacked": r.attacked, "lowered": r.lowered,
                         "robust": 100 * r.robust_after, "seconds": r.seconds}
                        for r in result.ensemble.records]}  # fmt: skip
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["pass_ratio"] = row["cost"] / base["cost"]
        out[name] = row
        print(
            f"{name}: robust {row['robust']:.1f} %  {row['seconds']:.1f} s  "
            f"x{row['time_ratio']:.1f} time  x{row['pass_ratio']:.1f} passes",
            flush=True,
        )
        for r in row["runs"]:
            print(f"   {r['run']:60s} attacked {r['attacked']:4d} broke {r['lowered']:4d}"
                  f"  -> {r['robust']:5.1f} %  {r['seconds']:5.1f} s", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("diagnose", "attacks", "suites"))
    parser.add_argument("--snn", required=True, help="SNN file or zoo:NAME")
    parser.add_argument("--data", required=True, help=".npz with a test split")
    parser.add_argument("--images", type=int, default=100, help="first N test images")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("-T", "--timesteps", type=int, default=None)
    parser.add_argument("--configs", default="[]", help="attacks: JSON [[name, mode, params]]")
    parser.add_argument("--suites", nargs="+", default=["quick", "standard"])
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    snn, x, y = load(args)
    eps = float(Fraction(args.eps))
    if args.command == "diagnose":
        result = diagnose(snn, x, y, eps)
        print(json.dumps(result, indent=1))
    elif args.command == "attacks":
        result = attacks(snn, x, y, eps, json.loads(args.configs))
        print(f"union {result['union']:.1f} %")
    else:
        for name in args.suites:
            get_suite(name)
        result = suites(snn, x, y, eps, args.suites)
    result = {"command": vars(args), **result}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
