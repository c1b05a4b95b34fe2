"""Per-sample worst case over a list of attacks and gradient modes, with early exit.

After seed 001's protocol (Oezdenizci & Legenstein, TMLR 2024) and AutoAttack (Croce & Hein
2020): runs go in order (cheapest first), each only on the samples still robust, and a sample
counts as robust only if it survives every run. Every candidate point is checked on the model
itself, in its own forward mode.

For stochastic models (Poisson / Gaussian encoders) correctness is an expectation over draws:
``p_i`` = fraction of ``eot`` forward passes that classify sample ``i`` correctly; a run lowers
``p_i`` to the lowest value it reaches, a sample leaves when ``p_i = 0``, and robust accuracy is
the mean of ``p_i``. For deterministic models ``p_i`` is 0 or 1 and this is the usual count.
A run's record counts only the samples it lowered beyond the noise of the draws
(:func:`lowered_beyond_noise`): a fresh estimate of an unchanged point is lower than the
minimum of the earlier ones about half of the time, so counting every drop would credit each
run, black-box and more-steps checks included, with breaks that are noise.

Progress can be saved after every batch (``checkpoint``) and resumed; each batch is seeded from
``(seed, run, batch)``, so a resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from convertsnn.attacks import build_attack
from convertsnn.attacks.base import Attack, GradientStats, margin
from convertsnn.attacks.passes import PassCount, counting_passes
from convertsnn.eval.settings import EvalSettings

_SHORT = {"steps": "", "queries": "", "targets": "x", "restarts": "r"}


@dataclass(frozen=True)
class Run:
    """One attack (name and arguments, see :func:`build_attack`) in one gradient mode.

    ``group``: runs of one group attack only the survivors of that group's earlier runs, so each
    group's own worst case is known (seed 001 reports one number per attack family); the
    ensemble number is the per-sample worst case over all groups."""

    attack: str
    params: tuple[tuple[str, object], ...] = ()
    mode: str = "native"
    group: str = ""

    @classmethod
    def of(cls, attack: str, mode: str = "native", group: str = "", **params) -> Run:
        return cls(attack, tuple(sorted(params.items())), mode, group)

    @property
    def label(self) -> str:
        """E.g. ``apgd-t-100x9 [adaptive:triangle:0.8]``."""
        params = dict(self.params)
        parts = "".join(
            f"{'-' if not short else short}{params[k]}"
            for k, short in _SHORT.items()
            if k in params and not (k == "restarts" and params[k] == 1)
        )
        extra = ",".join(f"{k}={v}" for k, v in self.params if k not in _SHORT)
        name = f"{self.attack}{parts}" + (f"({extra})" if extra else "")
        return name if self.mode == "native" else f"{name} [{self.mode}]"

    def build(self, model: nn.Module, settings: EvalSettings) -> Attack:
        return build_attack(self.attack, model, settings.eps, settings.norm, settings.eot,
                            self.mode, **dict(self.params))  # fmt: skip


@dataclass
class RunRecord:
    """What one run did: samples attacked, samples it lowered (beyond the noise of the draws,
    :func:`lowered_beyond_noise`; for deterministic models: broke), robust accuracy after it, and
    what it cost: wall ``seconds`` and image-passes of the model (``forward``, ``backward``,
    see :mod:`convertsnn.attacks.passes`; the correctness checks of its points included)."""

    label: str
    attack: str
    mode: str
    blackbox: bool
    attacked: int = 0
    lowered: int = 0
    robust_after: float = 0.0
    seconds: float = 0.0
    gradients: dict = field(default_factory=dict)
    note: str = ""  # e.g. "more-steps check" for a run a sanity check added
    forward: int = 0
    backward: int = 0

    @property
    def breaks_per_second(self) -> float:
        """Samples lowered per wall second (0 for a run that took no time)."""
        return self.lowered / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EnsembleResult:
    """Per-sample worst case: expected correctness ``correct`` ``[N]`` (0/1 if deterministic),
    the worst point found ``x_adv``, ``breaker`` = index of the run that found it (-1: none),
    and per group of runs (see :class:`Run`) its own per-sample correctness ``groups``."""

    clean: float
    robust: float
    correct: torch.Tensor
    x_adv: torch.Tensor
    breaker: torch.Tensor
    records: list[RunRecord]
    groups: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict:
        runs = [{**asdict(r), "breaks_per_second": r.breaks_per_second} for r in self.records]
        out = {"clean": self.clean, "robust": self.robust, "runs": runs}
        if len(self.groups) > 1:
            out["groups"] = {g: float(c.mean()) for g, c in self.groups.items()}
        return out

    def passes(self) -> PassCount:
        """Image-passes of all runs together."""
        total = PassCount()
        for record in self.records:
            total.add(PassCount(record.forward, record.backward))
        return total

    def samples(self, margins: torch.Tensor) -> list[dict]:
        """Per image: whether it survives, the label of the run that broke it, its margin
        ``z_y - max_{j != y} z_j`` at the worst point found (EOT mean of the logits)."""
        labels = [r.label for r in self.records]
        return [
            {"index": i, "survives": bool(c > 0), "correct": float(c),
             "broken_by": labels[b] if b >= 0 else None, "margin": float(m)}
            for i, (c, b, m) in enumerate(zip(self.correct.tolist(), self.breaker.tolist(),
                                              margins.tolist(), strict=True))
        ]  # fmt: skip


def per_sample(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """``score(x_batch, y_batch)`` (one number per sample) over ``x`` in batches, no gradients."""
    out = torch.empty(len(x), device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            out[start:stop] = score(x[start:stop], y[start:stop])
    return out


def expected_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1, batch_size: int = 256
) -> torch.Tensor:
    """Fraction of ``draws`` forward passes that classify each sample correctly, ``[N]``."""

    def score(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return sum((model(xb).argmax(1) == yb).float() for _ in range(draws)) / draws

    return per_sample(score, x, y, batch_size)


def margins(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1, batch_size: int = 256
) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` of the EOT-mean logits per sample, ``[N]`` (< 0: broken)."""

    def score(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return margin(sum(model(xb) for _ in range(draws)) / draws, yb)

    return per_sample(score, x, y, batch_size)


NOISE_Z = 3.0  # one-sided z of the two-proportion test behind a counted drop (~0.1 % false)


def lowered_beyond_noise(before: torch.Tensor, after: torch.Tensor, draws: int) -> torch.Tensor:
    """Samples whose share of correct draws fell from ``before`` to ``after`` (each estimated
    from ``draws`` draws) by more than sampling noise: a one-sided two-proportion z-test at
    :data:`NOISE_Z` with the pooled share; a fall from every draw right to every draw wrong
    always counts (so for deterministic models every break counts)."""
    pooled = (before + after) / 2
    noise = NOISE_Z * (pooled * (1 - pooled) * 2 / draws).sqrt()
    extreme = (before == 1) & (after == 0)
    return (after < before) & ((before - after > noise) | extreme)


def mean_moved_beyond_noise(a: torch.Tensor, b: torch.Tensor, draws: int) -> bool:
    """Do the means of two per-sample correctness vectors (each share estimated from ``draws``
    draws) differ by more than one sample's worth and by more than :data:`NOISE_Z` standard
    errors of the draws' noise? For deterministic models (shares 0 or 1) the noise is zero and
    the rule is "more than one sample"."""
    n = max(len(a), 1)
    noise = NOISE_Z * float((a * (1 - a) + b * (1 - b)).sum() / draws) ** 0.5 / n
    return abs(float(a.mean() - b.mean())) > max(1.0 / n, noise) + 1e-6  # float32 means


def batch_seed(seed: int, run: int, batch: int) -> int:
    return (seed * 1_000_003 + run * 10_007 + batch) % (2**63)


class WorstCase:
    """Runs a list of :class:`Run` on ``(x, y)`` and keeps the per-sample worst case.

    Args:
        model: the model under attack (an SNN in its own forward mode, or any classifier).
        settings: the threat model (``eps``, ``norm``), ``eot`` draws per gradient and per
            correctness estimate, ``batch_size`` samples per attack call, the base ``seed``
            (each (run, batch) is seeded from it) and ``progress`` (a progress bar).
        checkpoint: called with the state dict after every batch (see :meth:`run`).
    """

    def __init__(
        self,
        model: nn.Module,
        settings: EvalSettings,
        checkpoint: Callable[[dict], None] | None = None,
    ) -> None:
        self.model, self.settings, self.checkpoint = model, settings, checkpoint
        self.state: dict | None = None  # the last run's state, to continue it with more runs

    def run(
        self, x: torch.Tensor, y: torch.Tensor, runs: Sequence[Run], resume: dict | None = None
    ) -> EnsembleResult:
        """Attack ``x`` (images in [0, 1]) with labels ``y``; ``resume``: a checkpointed state."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self._run(x, y, list(runs), resume)
        finally:
            self.model.train(was_training)

    def _run(self, x, y, runs: list[Run], resume: dict | None) -> EnsembleResult:
        settings = self.settings
        if resume is not None:
            state = resume
            records = [RunRecord(**r) for r in state["records"]]
        else:
            correct = expected_correct(self.model, x, y, settings.eot, settings.batch_size)
            state = {"run": 0, "batch": 0, "pending": None, "correct": correct,
                     "clean": float(correct.mean()), "x_adv": x.clone(),
                     "breaker": torch.full((len(x),), -1, dtype=torch.long, device=x.device)}  # fmt: skip
            records = []
        self.state = state
        correct, x_adv, breaker = state["correct"], state["x_adv"], state["breaker"]
        names = list(dict.fromkeys(r.group for r in runs))
        if state.get("groups") is None or len(state["groups"]) != len(names):
            saved = state.get("groups")
            fresh = state["correct"].new_empty(len(names), len(x))
            fresh[:] = state["correct"]  # a new group starts from the ensemble's survivors
            if saved is not None:
                fresh[: len(saved)] = saved
            state["groups"] = fresh
        groups = state["groups"]
        bar = tqdm(total=len(runs), initial=state["run"], desc="attacks", leave=False,
                   disable=not settings.progress)  # fmt: skip
        for r in range(state["run"], len(runs)):
            spec = runs[r]
            own = groups[names.index(spec.group)]
            if state["pending"] is None:
                state["pending"] = (own > 0).nonzero().squeeze(1)
                state["batch"] = 0
                records.append(RunRecord(spec.label, spec.attack, spec.mode, False))
            record, pending = records[r], state["pending"]
            attack = spec.build(self.model, settings)
            record.blackbox = attack.blackbox
            bar.set_description(spec.label)
            for b, start in enumerate(range(0, len(pending), settings.batch_size)):
                if b < state["batch"]:
                    continue
                started = time.perf_counter()
                idx = pending[start : start + settings.batch_size]
                torch.manual_seed(batch_seed(settings.seed, r, b))
                attack.grad_stats = GradientStats()
                with counting_passes(*attack.costed_models()) as passes:  # attack.model included
                    candidate = attack(x[idx], y[idx])
                    p = expected_correct(self.model, candidate, y[idx], settings.eot,
                                         settings.batch_size)  # fmt: skip
                own[idx] = torch.minimum(own[idx], p)
                record.lowered += int(lowered_beyond_noise(correct[idx], p, settings.eot).sum())
                lower = p < correct[idx]
                correct[idx[lower]] = p[lower]
                x_adv[idx[lower]] = candidate[lower]
                breaker[idx[lower]] = r
                record.attacked += len(idx)
                record.seconds += time.perf_counter() - started
                record.forward += passes.forward
                record.backward += passes.backward
                _add_stats(record, attack)
                state["batch"] = b + 1
                record.robust_after = float(correct.mean())
                self._save(state, records)
            record.robust_after = float(correct.mean())
            state["run"], state["pending"], state["batch"] = r + 1, None, 0
            self._save(state, records)
            bar.update(1)
            bar.set_postfix(robust=f"{100 * record.robust_after:.1f}%")
        bar.close()
        return EnsembleResult(state["clean"], float(correct.mean()), correct, x_adv, breaker,
                              records, dict(zip(names, groups, strict=True)))  # fmt: skip

    def _save(self, state: dict, records: list[RunRecord]) -> None:
        state["records"] = [asdict(r) for r in records]  # so that ``self.state`` can go on
        if self.checkpoint is not None:
            self.checkpoint(state)


def _add_stats(record: RunRecord, attack: Attack) -> None:
    """Add the gradient counts of the attack's last batch to the record (white-box only)."""
    if not attack.blackbox:
        for key, value in asdict(attack.grad_stats).items():
            record.gradients[key] = record.gradients.get(key, 0) + value
