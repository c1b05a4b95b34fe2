"""Sanity checks printed with every robustness result (after AutoAttack's ``checks.py`` and
../shared/docs/methods.md section 6). A raised flag means the number may overstate robustness or
the evaluation is broken somewhere; a check that passes still reports what it saw.

- ``determinism``: two identical forward passes differ (randomised or stateful model).
- ``gradients``: per gradient mode, the share of attack steps whose input gradient was all zero
  (at correctly classified points) or non-finite; every mode above :data:`ZERO_SHARE` zero or
  with any non-finite gradient is named and raises the flag.
- ``black-box``: gradient-free attacks (Square, transfer) broke samples every white-box run
  missed (more than 0.2 % of the samples, AutoAttack's threshold).
- ``large-eps``: white-box accuracy does not reach ~0 (above 2 %) at a large radius
  (8 x eps, L-inf at most 0.5) on a probe of correctly classified samples.
- ``more-steps``: the suite's last run (APGD-CE with a larger budget in the mode that broke the
  most, on the survivors, see :func:`~convertsnn.eval.suites.run_suite`) still broke more than
  0.2 % of the samples; its breaks count in the result.
- ``more-queries``: a repeated black-box run (Square's second restart) still broke more than
  0.2 % of the samples.
- ``reparametrisation``: the same model rescaled (:mod:`convertsnn.eval.rescale`: every
  threshold brought to 1, every layer x1e-3, every layer x1e4) and re-attacked on a sample
  (FGSM in every white-box mode of the result, PGD-20 in its best mode) gives another number
  (beyond one sample and, for random models, beyond the draws' noise): some gradient mode
  depends on how the model is written.
- ``eps-trend``: robust accuracy rises with eps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import torch
from torch import nn
from tqdm.auto import tqdm

from convertsnn.attacks import ATTACKS
from convertsnn.attacks.ensemble import Run, WorstCase, expected_correct, mean_moved_beyond_noise
from convertsnn.eval.settings import EvalSettings
from convertsnn.snn.network import SpikingNetwork

TOLERANCE = 0.002  # fraction of samples, as AutoAttack's Square check
LARGE_EPS_ACCURACY = 0.02
ZERO_SHARE = 0.5  # a mode whose input gradient is all zero at more steps than this is masked
RESCALE_FACTORS = (1e-3, 1e4)
ZERO_MOVE = 0.2  # a run whose share of zero gradients moves this much under rescaling is flagged


@dataclass
class Flag:
    """One check: ``raised`` if it found a problem, ``message`` says what it saw."""

    check: str
    raised: bool
    message: str


def check_determinism(model: nn.Module, x: torch.Tensor, eot: int) -> Flag:
    """Run ``model`` twice on ``x``; random models (``SpikingNetwork.stochastic``) must come
    with EOT."""
    with torch.no_grad():
        differ = not torch.equal(model(x), model(x))
    randomness = getattr(model, "randomness", "")
    if randomness:
        if eot < 2:
            return Flag("determinism", True, f"the model is random ({randomness}) but EOT is "
                        "off (--eot 1): gradients and accuracy rest on single draws")  # fmt: skip
        return Flag("determinism", False, f"random model ({randomness}): accuracy is the "
                    f"expectation over {eot} draws, gradients average {eot} draws (EOT)")  # fmt: skip
    if differ:
        return Flag("determinism", True, "two identical forward passes gave different outputs: "
                    "the model is randomised or keeps state; evaluate it with --eot")  # fmt: skip
    return Flag("determinism", False, "two identical forward passes agree")


def check_gradients(records) -> Flag:
    """Zero / non-finite input gradients per gradient mode (see ``GradientStats``)."""
    totals: dict[str, list[int]] = {}
    for r in records:
        g = r.gradients
        if not r.blackbox and g.get("samples"):
            t = totals.setdefault(r.mode, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + g["samples"], t[1] + g["zero"], t[2] + g["nonfinite"]
    if not totals:
        return Flag("gradients", False, "no white-box gradients were taken")
    masked = {m: t for m, t in totals.items() if t[1] > ZERO_SHARE * t[0] or t[2]}
    if masked:
        listed = "; ".join(
            f"{m}: {100 * t[1] / t[0]:.0f}% zero" + (f", {t[2]} non-finite" if t[2] else "")
            for m, t in masked.items()
        )
        scope = "every gradient mode" if len(masked) == len(totals) else \
            f"{len(masked)} of {len(totals)} gradient modes"  # fmt: skip
        return Flag("gradients", True, f"masked or broken gradients in {scope} ({listed} of "
                    "steps at correct points); their runs are weak, trust the other modes' "
                    "breaks and the ensemble")  # fmt: skip
    some = {m: t for m, t in totals.items() if t[1]}
    listed = ", ".join(f"{m} {100 * t[1] / t[0]:.0f}%" for m, t in some.items())
    return Flag("gradients", False, f"no mode above {100 * ZERO_SHARE:.0f}% zero or with NaN "
                f"gradients in {len(totals)} modes" + (f" (zero: {listed})" if some else ""))  # fmt: skip


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
    settings: EvalSettings,
) -> Flag:
    """White-box APGD-CE-20 in ``modes`` (per-sample worst case) at :func:`large_eps` on ``x``.

    APGD's adaptive step, not PGD-20's fixed eps/8: on a dithered SNN at 16/255 PGD-20 left
    2.8 % and APGD-CE-20 1.5 % at the same cost (docs/evaluation.md, "Stochastic models")."""
    radius = large_eps(settings.eps, settings.norm)
    runs = [Run.of("apgd-ce", m, steps=20) for m in modes]
    result = WorstCase(model, replace(settings, eps=radius)).run(x, y, runs)
    correct = result.correct.mean().item()
    text = f"white-box accuracy at eps={radius:.4g}: {100 * correct:.1f}% of {len(x)} samples"
    if correct > LARGE_EPS_ACCURACY:
        return Flag("large-eps", True, text + " (does not reach ~0: masked gradients or a "
                    "too weak attack)")  # fmt: skip
    return Flag("large-eps", False, text)


def check_more_steps(records, samples: int) -> Flag:
    """Did the suite's more-steps run (its last record, see ``run_suite``) still break samples?"""
    record = records[-1] if records and records[-1].note == "more-steps check" else None
    if record is None:
        return Flag("more-steps", False, "no more-steps run (no survivors or no white-box run)")
    text = f"{record.label} on the {record.attacked} survivors broke {record.lowered} more"
    if record.lowered > TOLERANCE * samples:
        return Flag("more-steps", True, text + ": more steps still lower accuracy, the suite "
                    "has not converged (these breaks are counted)")  # fmt: skip
    return Flag("more-steps", False, text + " (counted)")


def check_reparametrisation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    result,
    settings: EvalSettings,
    factors: tuple[float, ...] = RESCALE_FACTORS,
) -> Flag:
    """Re-attack ``x`` (a sample of correct images) with FGSM in every white-box mode of
    ``result`` and PGD-20 (step eps/4) in its best mode, on the model as it is, with every
    threshold brought to 1, and rescaled by each factor (each run on its own and their worst
    case); flag when any of these numbers moves by more than one sample (and, for random
    models, by more than the noise of ``settings.eot`` draws: :func:`mean_moved_beyond_noise`),
    or a run's share of all-zero gradients by more than :data:`ZERO_MOVE`, naming the runs."""
    from convertsnn.eval.rescale import rescaled, unit_threshold_factors
    from convertsnn.eval.suites import best_mode

    modes = [r.mode for r in result.runs if not ATTACKS[r.attack].blackbox]
    if not isinstance(model, SpikingNetwork) or not modes:
        return Flag("reparametrisation", False, "no spiking layers or no white-box run")
    best = best_mode(result.ensemble.records, result.ranking, result.runs)
    runs = [Run.of("fgsm", m, group=f"fgsm [{m}]") for m in dict.fromkeys(modes)]
    runs.append(Run.of("pgd", best, group=f"pgd [{best}]", steps=20, step=0.25))

    def attack() -> dict[str, tuple[torch.Tensor, float]]:
        """Per run (and their worst case): per-sample correctness and share of all-zero
        gradients."""
        outcome = WorstCase(model, settings).run(x, y, runs)
        out = {"ensemble": (outcome.correct, 0.0)}
        for run, record in zip(runs, outcome.records, strict=True):
            zero = record.gradients.get("zero", 0) / max(record.gradients.get("samples", 0), 1)
            out[record.label] = (outcome.groups[run.group], zero)
        return out

    base = attack()
    versions = {}
    for factor in ("unit", *factors):
        with rescaled(model, unit_threshold_factors(model) if factor == "unit" else factor):
            versions["thresholds 1" if factor == "unit" else f"x{factor:g}"] = attack()

    def moves(name: str) -> bool:
        (correct, zero), others = base[name], [v[name] for v in versions.values()]
        return any(
            mean_moved_beyond_noise(correct, c, settings.eot) or abs(z - zero) > ZERO_MOVE
            for c, z in others
        )

    moved = [name for name in base if moves(name)]
    text = (
        f"{len(runs)} runs on {len(x)} images, robust as written "
        f"{100 * base['ensemble'][0].mean():.1f}%, "
        + ", ".join(
            f"rescaled ({f}) {100 * v['ensemble'][0].mean():.1f}%" for f, v in versions.items()
        )
    )
    if moved:
        detail = "; ".join(
            f"{g}: robust {100 * base[g][0].mean():.0f}% -> "
            + "/".join(f"{100 * v[g][0].mean():.0f}%" for v in versions.values())
            + f", zero gradients {100 * base[g][1]:.0f}% -> "
            + "/".join(f"{100 * v[g][1]:.0f}%" for v in versions.values())
            for g in moved
        )
        return Flag("reparametrisation", True, f"{text}; these depend on how the model is "
                    f"written (scale-dependent gradients, e.g. an absolute surrogate): {detail}")  # fmt: skip
    return Flag("reparametrisation", False, text + "; no run moved")


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
    settings: EvalSettings,
) -> list[Flag]:
    """All per-result checks for a SuiteResult (whose run already holds the more-steps run),
    at ``result``'s eps: the attacking ones on the first ``settings.check_samples`` (large-eps)
    and ``settings.reparametrisation_samples`` (0: skipped) correct images.

    ``settings.progress``: a bar over the checks (named as they run) and the attack bars of
    the ones that attack (large-eps, reparametrisation)."""
    from convertsnn.eval.suites import best_mode

    white = [r.mode for r in result.runs if not ATTACKS[r.attack].blackbox]
    records = result.ensemble.records
    settings = replace(settings, eps=result.eps, norm=result.norm)
    eot, probe_samples = settings.eot, settings.check_samples
    reparametrisation_samples = settings.reparametrisation_samples
    clean = expected_correct(model, x, y, eot, settings.batch_size)
    probe = (clean > 0).nonzero().squeeze(1)
    attacking = bool(white and len(probe))
    checks = 1 + attacking * (1 + bool(reparametrisation_samples))
    with tqdm(total=checks, desc="sanity", leave=False, disable=not settings.progress) as bar:
        bar.set_description("sanity: determinism, gradients, black-box, more steps/queries")
        flags = [check_determinism(model, x[:probe_samples], eot)]
        flags.append(check_gradients(records))
        flags.append(check_blackbox(records, len(x)))
        flags.append(check_more_queries(records, len(x)))
        flags.append(check_more_steps(records, len(x)))
        bar.update()
        if attacking:
            best = best_mode(records, result.ranking, result.runs)
            modes = list(dict.fromkeys([best, white[0], *(["ann"] if "ann" in white else [])]))
            idx = probe[:probe_samples]
            bar.set_description(f"sanity: large-eps ({len(modes)} APGD-CE-20 runs)")
            flags.append(check_large_eps(model, x[idx], y[idx], modes, settings))
            bar.update()
            if reparametrisation_samples:
                idx = probe[:reparametrisation_samples]
                bar.set_description(
                    f"sanity: reparametrisation (as written + {1 + len(RESCALE_FACTORS)} rescaled)"
                )
                flags.append(check_reparametrisation(model, x[idx], y[idx], result, settings))
                bar.update()
    return flags
