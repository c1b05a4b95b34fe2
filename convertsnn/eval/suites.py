"""Attack suites: which attacks in which gradient modes, in which order (docs/evaluation.md).

A suite is a list of stages. A stage is one attack with its arguments, run in several gradient
modes: all candidate modes (``"all"``), the ``K`` best (``"top:K"``) or none (black-box). The
candidates are first ranked by a probe: PGD-10 in every candidate mode on the same small batch
of correctly classified samples, best first (most samples broken, then highest mean DLR loss);
the adaptive surrogate is tuned by the same probe (its candidates differ in the coefficient ``a``
and only the best one stays). All runs then go to :class:`~convertsnn.attacks.ensemble.WorstCase`
in order: per-sample worst case, only survivors go on.

On a model that is not a :class:`SpikingNetwork` (e.g. the source-ANN view) every mode collapses
to the model's own gradient and the transfer attack is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from convertsnn.attacks import ATTACKS
from convertsnn.attacks.base import dlr_loss
from convertsnn.attacks.ensemble import EnsembleResult, Run, WorstCase, batch_seed, expected_correct
from convertsnn.attacks.gradient_modes import SEED001_MODES, parse_gradient_mode
from convertsnn.attacks.pgd import PGD
from convertsnn.errors import ConvertSNNError
from convertsnn.snn.network import SpikingNetwork


@dataclass(frozen=True)
class Stage:
    """One attack (``params`` as for :func:`~convertsnn.attacks.build_attack`) in ``modes``:
    ``"all"``, ``"top:K"`` (the K best candidates) or ``"none"`` (a black-box attack)."""

    attack: str
    params: dict = field(default_factory=dict)
    modes: str = "all"


@dataclass(frozen=True)
class Suite:
    """Candidate gradient modes, adaptive coefficients to tune, whether to probe, stages."""

    name: str
    description: str
    candidates: tuple[str, ...]
    adaptive: tuple[float, ...]
    probe: bool
    stages: tuple[Stage, ...]


QUICK = Suite(
    "quick",
    "FGSM and PGD-20 in 4 gradient modes (the model's surrogate, BPTR, ANN proxy, adaptive "
    "a=0.8), then Square-1000. A first look: minutes, not a final number.",
    candidates=("native", "bptr", "ann"),
    adaptive=(0.8,),
    probe=False,
    stages=(
        Stage("fgsm"),
        Stage("pgd", {"steps": 20}),
        Stage("square", {"queries": 1000}, "none"),
    ),
)

STANDARD = Suite(
    "standard",
    "Probe-ranked modes (model surrogate, STE, triangle 0.5/2, BPTR, ANN proxy, adaptive tuned "
    "over a in {0.4, 0.8, 1.6}); FGSM x top-3, PGD-20 x all, APGD-CE-100 x top-2, APGD-T-100 "
    "(9 targets) x top-1, transfer from the source ANN, Square-5000 (AutoAttack-like).",
    candidates=("native", "bptt:ste", "bptt:triangle:0.5", "bptt:triangle:2", "bptr", "ann"),
    adaptive=(0.4, 0.8, 1.6),
    probe=True,
    stages=(
        Stage("fgsm", modes="top:3"),
        Stage("pgd", {"steps": 20}),
        Stage("apgd-ce", {"steps": 100}, "top:2"),
        Stage("apgd-t", {"steps": 100, "targets": 9}, "top:1"),
        Stage("transfer", {"steps": 100}, "none"),
        Stage("square", {"queries": 5000}, "none"),
    ),
)

FULL = Suite(
    "full",
    "Seed 001's 19 gradient variants (17 BPTT surrogates, BPTR, ANN proxy) plus the adaptive "
    "surrogate tuned over a in {0.25, 0.5, 0.8, 1.25, 2}, probe-ranked; FGSM, R+FGSM and PGD-20 in all "
    "20, APGD-CE-100 and APGD-DLR-100 x top-3, APGD-T-100 (9 targets) x top-1, transfer from the "
    "source ANN, Square-5000 twice.",
    candidates=("native", *SEED001_MODES),
    adaptive=(0.25, 0.5, 0.8, 1.25, 2.0),
    probe=True,
    stages=(
        Stage("fgsm"),
        Stage("rfgsm"),
        Stage("pgd", {"steps": 20}),
        Stage("apgd-ce", {"steps": 100}, "top:3"),
        Stage("apgd-dlr", {"steps": 100}, "top:3"),
        Stage("apgd-t", {"steps": 100, "targets": 9}, "top:1"),
        Stage("transfer", {"steps": 100}, "none"),
        Stage("square", {"queries": 5000}, "none"),
        Stage("square", {"queries": 5000}, "none"),
    ),
)

SUITES = {s.name: s for s in (QUICK, STANDARD, FULL)}


def single_attack_suite(attack: str, params: dict, mode: str | None = None) -> Suite:
    """One attack in one gradient mode (default: the model's own), as a one-stage suite."""
    if attack not in ATTACKS:
        raise ConvertSNNError(f"unknown attack '{attack}'; choose one of {', '.join(ATTACKS)}")
    mode = str(parse_gradient_mode(mode))
    blackbox = ATTACKS[attack].blackbox
    if blackbox and mode != "native":
        raise ConvertSNNError(f"{attack} is a black-box attack and takes no gradient mode")
    label = Run.of(attack, "native" if blackbox else mode, **params).label
    return Suite(label, f"{label} alone", (mode,), (), False,
                 (Stage(attack, dict(params), "none" if blackbox else "all"),))  # fmt: skip


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConvertSNNError(f"unknown suite '{name}'; choose one of {', '.join(SUITES)}")
    return SUITES[name]


def native_mode(model: nn.Module) -> str:
    """The model's own gradient mode as a spec (``bptt:triangle:1`` for a default SNN)."""
    if not isinstance(model, SpikingNetwork):
        return "native"
    neurons = list(model.neurons())
    surrogates = {str(n.surrogate) for n in neurons}
    if model.gradient_mode == "bptt" and len(surrogates) == 1:
        return f"bptt:{surrogates.pop()}"
    return "native"


def candidate_modes(suite: Suite, model: nn.Module) -> list[str]:
    """The suite's candidate modes for ``model``, deduplicated, adaptive candidates last."""
    if not isinstance(model, SpikingNetwork):
        return ["native"]
    own = native_mode(model)
    modes = [own if m == "native" else m for m in suite.candidates]
    modes += [f"adaptive:triangle:{a:g}" for a in suite.adaptive]
    return list(dict.fromkeys(modes))


@dataclass
class ModeScore:
    """One candidate's probe result: samples broken by PGD-10 and the mean DLR loss reached."""

    mode: str
    broken: int
    loss: float


def rank_modes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    modes: list[str],
    eps: float,
    norm: str = "linf",
    eot: int = 1,
    steps: int = 10,
    seed: int = 0,
) -> list[ModeScore]:
    """PGD-``steps`` in each mode on the same ``(x, y)``; best first (the probe)."""
    scores = []
    for i, mode in enumerate(modes):
        torch.manual_seed(batch_seed(seed, -1, i))
        attack = PGD(model, eps, norm, eot, steps=steps, gradient_mode=mode)
        x_adv = attack(x, y)
        logits = attack.logits(x_adv)
        broken = int((logits.argmax(1) != y).sum())
        scores.append(ModeScore(mode, broken, float(dlr_loss(logits, y).mean())))
    return sorted(scores, key=lambda s: (-s.broken, -s.loss))


def resolve_runs(suite: Suite, model: nn.Module, ranked: list[str]) -> list[Run]:
    """The suite's stages as concrete runs, given the candidate modes best first."""
    is_snn = isinstance(model, SpikingNetwork)
    runs = []
    for stage in suite.stages:
        if stage.modes == "none":
            if stage.attack == "transfer" and not is_snn:
                continue
            runs.append(Run.of(stage.attack, **stage.params))
            continue
        count = int(stage.modes.partition(":")[2]) if stage.modes.startswith("top:") else None
        for mode in ranked[:count]:
            runs.append(Run.of(stage.attack, mode, **stage.params))
    return runs


@dataclass
class SuiteResult:
    """A suite's outcome at one eps: the ensemble result, the probe ranking, flags, timing."""

    suite: str
    eps: float
    norm: str
    ensemble: EnsembleResult
    ranking: list[ModeScore]
    runs: list[Run]
    seconds: float
    flags: list = field(default_factory=list)

    @property
    def robust(self) -> float:
        return self.ensemble.robust

    def summary(self) -> dict:
        return {
            "suite": self.suite,
            "eps": self.eps,
            "norm": self.norm,
            **self.ensemble.summary(),
            "probe": [vars(s) for s in self.ranking],
            "seconds": self.seconds,
            "flags": [vars(f) for f in self.flags],
        }


def prepare_runs(
    suite: Suite,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    eot: int = 1,
    probe_samples: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[list[Run], list[ModeScore]]:
    """Rank the candidate modes (probe, on the first ``probe_samples`` correct samples) and
    turn the suite into runs. Without a probe, candidates keep the suite's order."""
    modes = candidate_modes(suite, model)
    ranking: list[ModeScore] = []
    if suite.probe and len(modes) > 1:
        correct = expected_correct(model, x, y, eot, batch_size) > 0
        idx = correct.nonzero().squeeze(1)[:probe_samples]
        if len(idx):
            ranking = rank_modes(model, x[idx], y[idx], modes, eps, norm, eot, seed=seed)
            modes = [s.mode for s in ranking]
    best_adaptive = next((m for m in modes if m.startswith("adaptive")), None)
    modes = [m for m in modes if not m.startswith("adaptive") or m == best_adaptive]
    return resolve_runs(suite, model, modes), ranking


def run_suite(
    suite: Suite | str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    eot: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    probe_samples: int = 64,
    state=None,
    progress: bool = True,
) -> SuiteResult:
    """Run ``suite`` on ``(x, y)`` at ``eps``. ``state``: an optional
    :class:`~convertsnn.eval.state.RunState` slot to save progress in and resume from."""
    suite = get_suite(suite) if isinstance(suite, str) else suite
    start = time.perf_counter()
    saved = state.load(x.device) if state is not None else None
    if saved is not None:
        runs = [Run(r["attack"], tuple((k, v) for k, v in r["params"]), r["mode"])
                for r in saved["runs"]]  # fmt: skip
        ranking = [ModeScore(**s) for s in saved["ranking"]]
    else:
        runs, ranking = prepare_runs(suite, model, x, y, eps, norm, eot, probe_samples, seed,
                                     batch_size)  # fmt: skip
    checkpoint = None
    if state is not None:
        meta = {"runs": [{"attack": r.attack, "params": list(r.params), "mode": r.mode}
                         for r in runs], "ranking": [vars(s) for s in ranking]}  # fmt: skip
        checkpoint = lambda progress_state: state.save(progress_state, meta)  # noqa: E731
    ensemble = WorstCase(model, eps, norm, eot, batch_size, seed, checkpoint, progress)
    result = ensemble.run(x, y, runs, resume=saved["progress"] if saved else None)
    return SuiteResult(suite.name, eps, norm, result, ranking, runs,
                       time.perf_counter() - start)  # fmt: skip
