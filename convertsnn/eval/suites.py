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

import inspect
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from convertsnn.attacks import ATTACKS
from convertsnn.attacks.base import dlr_loss
from convertsnn.attacks.ensemble import EnsembleResult, Run, WorstCase, batch_seed, expected_correct
from convertsnn.attacks.gradient_modes import SEED000_MODES, SEED001_MODES, parse_gradient_mode
from convertsnn.attacks.passes import PassCount, counting_passes, pgd20_passes
from convertsnn.attacks.pgd import PGD
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.settings import EvalSettings
from convertsnn.snn.network import SpikingNetwork


@dataclass(frozen=True)
class Stage:
    """One attack (``params`` as for :func:`~convertsnn.attacks.build_attack`) in ``modes``:
    ``"all"`` candidates, ``"top:K"`` (the K best candidates), ``"none"`` (a black-box attack)
    or a tuple of mode specs (run as given)."""

    attack: str
    params: dict = field(default_factory=dict)
    modes: str | tuple[str, ...] = "all"


@dataclass(frozen=True)
class Suite:
    """Candidate gradient modes, adaptive coefficients to tune, whether to probe, stages.

    ``families``: every stage's runs form their own group (one robust accuracy per attack
    family, as seed 001 reports; runs of a family attack only that family's survivors).
    ``more_steps``: the steps of the APGD-CE run added after the ensemble in its best mode
    (more than the suite's own runs take, so that it checks convergence; 0: none); its breaks
    count in the number.
    ``more_queries``: the queries of a second Square run on the quarter of the survivors nearest
    to the boundary (:data:`SQUARE_NEAREST`), added only when the suite's Square runs broke a
    sample that every white-box run missed (a sign of shattered outputs, where each query is
    another chance to cross a jump); its breaks count (0: never).
    """

    name: str
    description: str
    candidates: tuple[str, ...]
    adaptive: tuple[float, ...]
    probe: bool
    stages: tuple[Stage, ...]
    families: bool = False
    more_steps: int = 40
    more_queries: int = 0


# sharp threshold-relative surrogates with the reset detached: with restarts and a step of eps/4
# the outside attacks that beat the first version of these suites (docs/evaluation.md)
SHARP_MODES = ("bptt:sigmoid:20:detach", "bptt:rect:0.25:detach")
SHARP_PGD = {"steps": 20, "step": 0.25, "restarts": 2}
# PGD-20 (step eps/4), then a greedy local random search: spike-count outputs are shattered, so
# extra forward-only evaluations near the PGD point break what more gradient steps do not
# (benchmarks/results/masking.md)
SEARCH = {"steps": 20, "step": 0.25}
# the share of survivors (per batch, smallest margin first) that standard's Square runs search:
# on the shattered CIFAR-10 SNN every image Square-2000 broke among 150 survivors had one of the
# smallest 25 % of clean margins, and Square-4000 on that quarter broke twice as many (10) at half
# the queries (docs/evaluation.md)
SQUARE_NEAREST = 0.25

QUICK = Suite(
    "quick",
    "FGSM in 6 gradient modes (the model's surrogate, sigmoid 20 and rect 0.25 with detached "
    "reset, BPTR, ANN proxy, adaptive a=0.8), PGD-20 (step eps/4, 2 restarts) + 100-query local "
    "search in sigmoid 20 (detached reset), Square-200 on the quarter of the survivors nearest "
    "to the boundary, APGD-CE-20. A first look, not a final number.",
    candidates=("native", *SHARP_MODES, "bptr", "ann"),
    adaptive=(0.8,),
    probe=False,
    stages=(
        Stage("fgsm"),
        Stage("pgd-search", {**SEARCH, "restarts": 2, "queries": 100}, SHARP_MODES[:1]),
        # half the queries of Square-100 on all; on the CIFAR-10 trades SNN 5 breaks instead of 1
        Stage("square", {"queries": 200, "nearest": SQUARE_NEAREST}, "none"),
    ),
    more_steps=20,
)

STANDARD = Suite(
    "standard",
    "Probe-ranked modes (model surrogate, sigmoid 20 / rect 0.25 / triangle 0.25 with detached "
    "reset, seed 000's sigmoid 4 and atan 2, STE, triangle 0.5, BPTR, ANN proxy, adaptive tuned "
    "over a in {0.4, 0.8, 1.6}); FGSM x top-6, PGD-20 (step eps/4) + local search (up to 500 "
    "queries, stopped early far from the boundary) x top-3, APGD-DLR-40 x top-1, transfer "
    "from the source ANN, Square-1200 on the quarter of the survivors nearest to the boundary "
    "(then Square-4000 on that quarter if it broke any), APGD-CE-40.",
    candidates=(
        "native",
        *SHARP_MODES,
        "bptt:triangle:0.25:detach",
        *SEED000_MODES,
        "bptt:ste",
        "bptt:triangle:0.5",
        "bptr",
        "ann",
    ),
    adaptive=(0.4, 0.8, 1.6),
    probe=True,
    stages=(
        Stage("fgsm", modes="top:6"),
        Stage("pgd-search", {**SEARCH, "queries": 500, "give_up": 6.0}, "top:3"),
        Stage("apgd-dlr", {"steps": 40}, "top:1"),
        Stage("transfer", {"steps": 100}, "none"),
        Stage("square", {"queries": 1200, "nearest": SQUARE_NEAREST}, "none"),
    ),
    more_queries=4000,
)

FULL = Suite(
    "full",
    "Seed 001's 19 variants, seed 000's, the sharp detached modes and the adaptive surrogate "
    "tuned over a in {0.25, 0.5, 0.8, 1.25, 2}, probe-ranked; FGSM and R+FGSM in all, PGD-20 "
    "(step eps/4) + 1000-query local search x top-3, PGD-20 (step eps/4, 10 restarts) x top-2, "
    "PGD-20 in all, APGD-CE-100 and APGD-DLR-100 x top-3, "
    "APGD-T-100 (9 targets) x top-1, pyautoattack standard x top-1, transfer from the source "
    "ANN, Square-5000 twice.",
    candidates=(
        "native",
        *SHARP_MODES,
        "bptt:triangle:0.25:detach",
        *SEED000_MODES,
        *SEED001_MODES,
    ),
    adaptive=(0.25, 0.5, 0.8, 1.25, 2.0),
    probe=True,
    stages=(
        Stage("fgsm"),
        Stage("rfgsm"),
        Stage("pgd-search", {**SEARCH, "queries": 1000}, "top:3"),
        Stage("pgd", {**SHARP_PGD, "restarts": 10}, "top:2"),
        Stage("pgd", {"steps": 20}),
        Stage("apgd-ce", {"steps": 100}, "top:3"),
        Stage("apgd-dlr", {"steps": 100}, "top:3"),
        Stage("apgd-t", {"steps": 100, "targets": 9}, "top:1"),
        Stage("autoattack", {"version": "standard"}, "top:1"),
        Stage("transfer", {"steps": 100}, "none"),
        Stage("square", {"queries": 5000}, "none"),
        Stage("square", {"queries": 5000}, "none"),
    ),
    more_steps=400,
)

S001 = Suite(
    "s001",
    "Seed 001's protocol (Oezdenizci & Legenstein, TMLR 2024): FGSM, R+FGSM, PGD-20, "
    "APGD-CE-100, APGD-DLR-100 and APGD-T-100 (9 targets), each in its 19 variants; one robust "
    "accuracy per family and their per-sample worst case.",
    candidates=SEED001_MODES,
    adaptive=(),
    probe=False,
    stages=(
        Stage("fgsm"),
        Stage("rfgsm"),
        Stage("pgd", {"steps": 20}),
        Stage("apgd-ce", {"steps": 100}),
        Stage("apgd-dlr", {"steps": 100}),
        Stage("apgd-t", {"steps": 100, "targets": 9}),
    ),
    families=True,
    more_steps=0,
)

SUITES = {s.name: s for s in (QUICK, STANDARD, FULL, S001)}


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
                 (Stage(attack, dict(params), "none" if blackbox else "all"),),
                 more_steps=2 * params.get("steps", default_steps(attack)))  # fmt: skip


def default_steps(attack: str) -> int:
    """The attack's default number of gradient steps (1 for one-step attacks such as FGSM)."""
    for cls in ATTACKS[attack].__mro__:  # pgd-search passes steps on to PGD
        parameter = inspect.signature(cls.__init__).parameters.get("steps")
        if parameter is not None:
            return parameter.default
    return 1


def with_transfer_source(suite: Suite, source: str, steps: int = 100) -> Suite:
    """``suite`` plus a transfer run from ``source`` (a model file or importer source string)
    before its first Square run (at the end if it has none)."""
    stages = list(suite.stages)
    at = next((i for i, st in enumerate(stages) if st.attack == "square"), len(stages))
    stages.insert(at, Stage("transfer", {"steps": steps, "source": str(source)}, "none"))
    return replace(suite, description=f"{suite.description} Plus transfer from {source}.",
                   stages=tuple(stages))  # fmt: skip


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
    """One candidate's probe result: samples broken by PGD-10 (of ``samples``; for a random
    model the expected count over its draws), the mean DLR loss reached, and the binomial
    standard deviation of ``broken`` (how stable the rank is)."""

    mode: str
    broken: float
    loss: float
    samples: int = 0
    spread: float = 0.0


def rank_modes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    modes: list[str],
    settings: EvalSettings,
    steps: int = 10,
) -> list[ModeScore]:
    """PGD-``steps`` (step eps/4) in each mode on the same ``(x, y)``; best first (the probe)."""
    scores = []
    for i, mode in enumerate(modes):
        torch.manual_seed(batch_seed(settings.seed, -1, i))
        attack = PGD(model, settings.eps, settings.norm, settings.eot, steps=steps, step=0.25,
                     gradient_mode=mode)  # fmt: skip
        x_adv = attack(x, y)
        logits, correct = attack.judge(x_adv, y)
        broken = round(float((1 - correct).sum()), 2)  # expected count over EOT draws
        rate = broken / max(len(x), 1)
        spread = (len(x) * rate * (1 - rate)) ** 0.5
        scores.append(ModeScore(mode, broken, float(dlr_loss(logits, y).mean()), len(x), spread))
    return sorted(scores, key=lambda s: (-s.broken, -s.loss))


def resolve_runs(suite: Suite, model: nn.Module, ranked: list[str]) -> list[Run]:
    """The suite's stages as concrete runs, given the candidate modes best first."""
    is_snn = isinstance(model, SpikingNetwork)
    runs = []
    for stage in suite.stages:
        group = f"{stage.attack}{Run.of(stage.attack, **stage.params).label[len(stage.attack):]}" \
            if suite.families else ""  # fmt: skip
        if stage.modes == "none":
            if stage.attack == "transfer" and not is_snn:
                continue
            runs.append(Run.of(stage.attack, group=group, **stage.params))
            continue
        if isinstance(stage.modes, tuple):
            modes = list(stage.modes) if is_snn else ["native"]
        else:
            count = int(stage.modes.partition(":")[2]) if stage.modes.startswith("top:") else None
            modes = ranked[:count]
        for mode in dict.fromkeys(modes):
            runs.append(Run.of(stage.attack, mode, group=group, **stage.params))
    return runs


def best_mode(records, ranking: list[ModeScore], runs: list[Run]) -> str:
    """The white-box mode whose runs broke the most samples in the ensemble (ties: the probe's
    order, then the run order)."""
    white = [r.mode for r in runs if not ATTACKS[r.attack].blackbox]
    if not white:
        return "native"
    order = list(dict.fromkeys([s.mode for s in ranking] + white))
    lowered = {m: 0 for m in order}
    for record in records:
        if not record.blackbox and record.mode in lowered:
            lowered[record.mode] += record.lowered
    return max(order, key=lambda m: (lowered[m], -order.index(m)))


def more_steps_run(suite: Suite, mode: str) -> Run:
    """APGD-CE with ``suite.more_steps`` steps, in ``mode``."""
    group = "more-steps" if suite.families else ""
    return Run.of("apgd-ce", mode, group=group, steps=suite.more_steps)


@dataclass
class SuiteResult:
    """A suite's outcome at one eps: the ensemble result, the probe ranking, flags, timing, and
    the image-passes of the probe (``probe_passes``; the runs' are in their records) with the
    ``eot`` draws they were made with."""

    suite: str
    eps: float
    norm: str
    ensemble: EnsembleResult
    ranking: list[ModeScore]
    runs: list[Run]
    seconds: float
    flags: list = field(default_factory=list)
    probe_passes: PassCount = field(default_factory=PassCount)
    eot: int = 1

    @property
    def robust(self) -> float:
        return self.ensemble.robust

    def cost(self) -> dict:
        """Image-passes of the probe and all runs, and their ratio to one PGD-20 run on the
        same images with the same EOT draws (:func:`~convertsnn.attacks.passes.pgd20_passes`)."""
        total = self.ensemble.passes()
        total.add(self.probe_passes)
        reference = pgd20_passes(len(self.ensemble.correct), self.eot)
        return {"forward": total.forward, "backward": total.backward,
                "probe": asdict(self.probe_passes), "pgd20_passes": reference,
                "pgd20_ratio": total.total / reference if reference else 0.0}  # fmt: skip

    def summary(self) -> dict:
        return {
            "suite": self.suite,
            "eps": self.eps,
            "norm": self.norm,
            **self.ensemble.summary(),
            "probe": [vars(s) for s in self.ranking],
            "seconds": self.seconds,
            "cost": self.cost(),
            "flags": [vars(f) for f in self.flags],
        }


def prepare_runs(
    suite: Suite, model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings
) -> tuple[list[Run], list[ModeScore]]:
    """Rank the candidate modes (probe, on the first ``settings.probe_samples`` correct samples)
    and turn the suite into runs. Without a probe, candidates keep the suite's order."""
    modes = candidate_modes(suite, model)
    ranking: list[ModeScore] = []
    if suite.probe and len(modes) > 1:
        correct = expected_correct(model, x, y, settings.eot, settings.batch_size) > 0
        idx = correct.nonzero().squeeze(1)[: settings.probe_samples]
        if len(idx):
            ranking = rank_modes(model, x[idx], y[idx], modes, settings)
            modes = [s.mode for s in ranking]
    best_adaptive = next((m for m in modes if m.startswith("adaptive")), None)
    modes = [m for m in modes if not m.startswith("adaptive") or m == best_adaptive]
    return resolve_runs(suite, model, modes), ranking


def check_suite(suite: Suite, model: nn.Module, x: torch.Tensor) -> None:
    """Raise a one-line error before any attack runs if ``suite`` cannot run on ``model``."""
    if "apgd-t" in {stage.attack for stage in suite.stages}:
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        if classes < 4:
            raise ConvertSNNError(
                f"suite '{suite.name}' runs APGD-T, which needs at least 4 classes; the model "
                f"has {classes}: use --suite quick or single attacks"
            )


def run_suite(
    suite: Suite | str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalSettings,
    state=None,
) -> SuiteResult:
    """Run ``suite`` on ``(x, y)`` at ``settings.eps``. ``state``: an optional
    :class:`~convertsnn.eval.state.RunState` slot to save progress in and resume from.

    With ``suite.more_queries`` > 0, a second Square run follows when the suite's Square runs
    broke samples (record note ``"more-queries escalation"``). With ``settings.sanity`` (and
    ``suite.more_steps`` > 0) the ensemble ends with the more-steps
    check: APGD-CE with a larger budget in the mode that broke most, on the survivors; its
    breaks count in the number and in the saved state (record note ``"more-steps check"``)."""
    suite = get_suite(suite) if isinstance(suite, str) else suite
    start = time.perf_counter()
    saved = state.load(x.device) if state is not None else None
    if saved is not None:
        runs = [Run(r["attack"], tuple((k, v) for k, v in r["params"]), r["mode"],
                    r.get("group", "")) for r in saved["runs"]]  # fmt: skip
        ranking = [ModeScore(**s) for s in saved["ranking"]]
        extra = saved.get("more_steps", False)
        escalated = saved.get("more_queries", False)
        probe_passes = PassCount(**saved.get("probe_passes", {}))
    else:
        check_suite(suite, model, x)
        with counting_passes(model) as probe_passes:
            runs, ranking = prepare_runs(suite, model, x, y, settings)
        extra = escalated = False
    meta = {"runs": [], "ranking": [vars(s) for s in ranking], "more_steps": extra,
            "more_queries": escalated,
            "probe_passes": asdict(probe_passes)}  # fmt: skip

    def checkpoint(progress_state: dict) -> None:
        state.save(progress_state, meta)

    def describe(run_list: list[Run]) -> None:
        meta["runs"] = [{"attack": r.attack, "params": list(r.params), "mode": r.mode,
                         "group": r.group} for r in run_list]  # fmt: skip

    describe(runs)
    ensemble = WorstCase(model, settings, checkpoint if state is not None else None)
    result = ensemble.run(x, y, runs, resume=saved["progress"] if saved else None)
    if suite.more_queries and not (escalated or extra) and (result.correct > 0).any():
        if any(r.lowered for r in result.records if r.attack == "square"):
            runs = [*runs, Run.of("square", queries=suite.more_queries, nearest=SQUARE_NEAREST)]
            meta["more_queries"] = escalated = True
            describe(runs)
            result = ensemble.run(x, y, runs, resume=ensemble.state)
    if settings.sanity and suite.more_steps and not extra and (result.correct > 0).any():
        if any(not ATTACKS[r.attack].blackbox for r in runs):
            runs = [*runs, more_steps_run(suite, best_mode(result.records, ranking, runs))]
            meta["more_steps"] = True
            describe(runs)
            result = ensemble.run(x, y, runs, resume=ensemble.state)
            extra = True
    if escalated:
        result.records[len(runs) - 1 - extra].note = "more-queries escalation"
    if extra:
        result.records[-1].note = "more-steps check"
    return SuiteResult(suite.name, settings.eps, settings.norm, result, ranking, runs,
                       time.perf_counter() - start, probe_passes=probe_passes,
                       eot=settings.eot)  # fmt: skip
