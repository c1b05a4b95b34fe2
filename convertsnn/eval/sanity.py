"""Sanity checks printed with every robustness result (after AutoAttack's ``checks.py`` and
../shared/docs/methods.md section 6). A raised flag means the number may overstate robustness or
the evaluation is broken somewhere; a check that passes still reports what it saw.

- ``determinism``: two identical forward passes differ (randomised or stateful model).
- ``gradients``: input gradients that are all zero or non-finite at correctly classified points.
- ``black-box``: gradient-free attacks (Square, transfer) broke samples every white-box run
  missed (more than 0.2 % of the samples, AutoAttack's threshold).
- ``large-eps``: white-box accuracy does not reach ~0 (above 2 %) at a large radius
  (8 x eps, L-inf at most 0.5) on a probe of correctly classified samples.
- ``more-steps``: APGD-CE with 4x the suite's longest step budget, in the best mode, still breaks
  samples that survived the suite (more than 0.2 %); its breaks count in the result.
- ``more-queries``: a repeated black-box run (Square's second restart) still broke more than
  0.2 % of the samples.
- ``eps-trend``: robust accuracy rises with eps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
from torch import nn

from convertsnn.attacks import ATTACKS
from convertsnn.attacks.ensemble import Run, WorstCase, expected_correct

TOLERANCE = 0.002  # fraction of samples, as AutoAttack's Square check
LARGE_EPS_ACCURACY = 0.02


@dataclass
class Flag:
    """One check: ``raised`` if it found a problem, ``message`` says what it saw."""

    check: str
    raised: bool
    message: str


def check_determinism(model: nn.Module, x: torch.Tensor, eot: int) -> Flag:
    """Run ``model`` twice on ``x``; stochastic encoders must come with EOT."""
    with torch.no_grad():
        differ = not torch.equal(model(x), model(x))
    encoder = getattr(model, "encoder", None)
    if getattr(encoder, "stochastic", False):
        if eot < 2:
            return Flag("determinism", True, f"the {encoder} encoder is random but EOT is off "
                        "(--eot 1): gradients and accuracy rest on single draws")  # fmt: skip
        return Flag("determinism", False, f"stochastic {encoder} encoder: accuracy is the "
                    f"expectation over {eot} draws, gradients average {eot} draws (EOT)")  # fmt: skip
    if differ:
        return Flag("determinism", True, "two identical forward passes gave different outputs: "
                    "the model is randomised or keeps state; evaluate it with --eot")  # fmt: skip
    return Flag("determinism", False, "two identical forward passes agree")


def check_gradients(records) -> Flag:
    """Zero / non-finite input gradients per white-box run (see ``GradientStats``)."""
    shares = {}
    nonfinite = 0
    for r in records:
        g = r.gradients
        if not r.blackbox and g.get("samples"):
            shares[r.mode] = max(shares.get(r.mode, 0.0), g["zero"] / g["samples"])
            nonfinite += g["nonfinite"]
    if not shares:
        return Flag("gradients", False, "no white-box gradients were taken")
    zero_modes = {m: s for m, s in shares.items() if s > 0}
    if nonfinite:
        return Flag("gradients", True, f"{nonfinite} gradients were NaN or infinite")
    if len(zero_modes) == len(shares):
        worst = ", ".join(f"{m} {100 * s:.0f}%" for m, s in zero_modes.items())
        return Flag("gradients", True, "all-zero input gradients in every gradient mode "
                    f"({worst} of steps at correct points): gradients are masked")  # fmt: skip
    if zero_modes:
        listed = ", ".join(f"{m} {100 * s:.0f}%" for m, s in sorted(zero_modes.items()))
        return Flag("gradients", False, f"some modes give all-zero gradients ({listed}); "
                    f"{len(shares) - len(zero_modes)} other modes do not")  # fmt: skip
    return Flag("gradients", False, f"no zero or NaN gradients in {len(shares)} gradient modes")


def check_blackbox(records, samples: int) -> Flag:
    """Did gradient-free runs (after all white-box runs) break samples white-box missed?"""
    lowered: dict[str, int] = {}
    for r in records:
        if r.blackbox:
            lowered[r.label] = lowered.get(r.label, 0) + r.lowered
    if not lowered:
        return Flag("black-box", False, "no black-box attack in this evaluation")
    total = sum(lowered.values())
    detail = ", ".join(f"{k}: {v}" for k, v in lowered.items())
    if total > TOLERANCE * samples:
        return Flag("black-box", True, f"black-box attacks broke {total} samples that every "
                    f"white-box run missed ({detail}): white-box gradients understate the "
                    "attack; trust only the ensemble number")  # fmt: skip
    return Flag("black-box", False, f"black-box attacks add {total} breaks ({detail})")


def check_more_queries(records, samples: int) -> Flag:
    """Did a repeated black-box run (e.g. Square's second 5000 queries) still break samples?"""
    seen: dict[str, int] = {}
    last = None
    for r in records:
        if r.blackbox:
            seen[r.attack] = seen.get(r.attack, 0) + 1
            if seen[r.attack] > 1:
                last = r
    if last is None:
        return Flag("more-queries", False, "no repeated black-box run")
    text = f"the repeated {last.label} broke {last.lowered} more samples"
    if last.lowered > TOLERANCE * samples:
        return Flag("more-queries", True, text + ": more queries would likely lower the number "
                    "further; it is an upper bound")  # fmt: skip
    return Flag("more-queries", False, text)


def large_eps(eps: float, norm: str) -> float:
    return min(8 * eps, 0.5) if norm == "linf" else 8 * eps


def check_large_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    modes: list[str],
    eps: float,
    norm: str = "linf",
    eot: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> Flag:
    """White-box PGD-20 in ``modes`` (per-sample worst case) at :func:`large_eps` on ``x``."""
    radius = large_eps(eps, norm)
    runs = [Run.of("pgd", m, steps=20) for m in modes]
    result = WorstCase(model, radius, norm, eot, batch_size, seed, progress=False).run(x, y, runs)
    correct = result.correct.mean().item()
    text = f"white-box accuracy at eps={radius:.4g}: {100 * correct:.1f}% of {len(x)} samples"
    if correct > LARGE_EPS_ACCURACY:
        return Flag("large-eps", True, text + " (does not reach ~0: masked gradients or a "
                    "too weak attack)")  # fmt: skip
    return Flag("large-eps", False, text)


def check_more_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    result,
    mode: str,
    eot: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> Flag:
    """APGD-CE with 4x the longest white-box budget of ``result`` (a SuiteResult) on its
    survivors; the breaks it finds are added to ``result``."""
    budgets = [
        dict(r.params).get("steps", 1) for r in result.runs if not ATTACKS[r.attack].blackbox
    ]
    steps = 4 * max(budgets, default=20)
    run = Run.of("apgd-ce", mode, steps=steps)
    ensemble = result.ensemble
    before = ensemble.robust
    state = {"run": len(result.runs), "batch": 0, "pending": None, "correct": ensemble.correct,
             "clean": ensemble.clean, "x_adv": ensemble.x_adv, "breaker": ensemble.breaker,
             "records": [asdict(r) for r in ensemble.records]}  # fmt: skip
    worst = WorstCase(model, result.eps, result.norm, eot, batch_size, seed + 1, progress=False)
    updated = worst.run(x, y, [*result.runs, run], resume=state)
    result.ensemble, result.runs = updated, [*result.runs, run]
    updated.records[-1].note = "more-steps check"
    lowered = updated.records[-1].lowered
    text = (f"{run.label} on the {updated.records[-1].attacked} survivors broke {lowered} more "
            f"(robust {100 * before:.2f}% -> {100 * updated.robust:.2f}%)")  # fmt: skip
    if lowered > TOLERANCE * len(x):
        return Flag("more-steps", True, text + ": more steps still lower accuracy, the suite "
                    "has not converged")  # fmt: skip
    return Flag("more-steps", False, text)


def check_eps_trend(robust_by_eps: dict[float, float], samples: int) -> Flag:
    """Robust accuracy should not rise with eps (beyond one sample)."""
    values = [robust_by_eps[e] for e in sorted(robust_by_eps)]
    rises = [b - a for a, b in pairwise(values) if b - a > 1.0 / samples]
    if rises:
        return Flag("eps-trend", True, "robust accuracy rises with eps: the attacks are "
                    "unreliable at some radius")  # fmt: skip
    return Flag("eps-trend", False, f"robust accuracy falls with eps over {len(values)} radii")


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    result,
    eot: int = 1,
    probe_samples: int = 100,
    batch_size: int = 256,
    seed: int = 0,
) -> list[Flag]:
    """All per-result checks for a SuiteResult (``more-steps`` also updates it)."""
    white = [r.mode for r in result.runs if not ATTACKS[r.attack].blackbox]
    best = result.ranking[0].mode if result.ranking else (white[0] if white else "native")
    flags = [check_determinism(model, x[:probe_samples], eot)]
    flags.append(check_gradients(result.ensemble.records))
    flags.append(check_blackbox(result.ensemble.records, len(x)))
    flags.append(check_more_queries(result.ensemble.records, len(x)))
    clean = expected_correct(model, x, y, eot, batch_size)
    probe = (clean > 0).nonzero().squeeze(1)[:probe_samples]
    if white and len(probe):
        modes = list(dict.fromkeys([best, white[0], *(["ann"] if "ann" in white else [])]))
        flags.append(check_large_eps(model, x[probe], y[probe], modes, result.eps, result.norm,
                                     eot, batch_size, seed))  # fmt: skip
    if white and (result.ensemble.correct > 0).any():
        flags.append(check_more_steps(model, x, y, result, best, eot, batch_size, seed))
    return flags
