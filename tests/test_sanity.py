"""Sanity flags: a planted gradient-masking model is flagged and Square still breaks it."""

import torch
from torch import nn

from convertsnn import convert
from convertsnn.attacks.ensemble import Run
from convertsnn.eval.sanity import (
    check_blackbox,
    check_determinism,
    check_eps_trend,
    check_gradients,
    run_checks,
)
from convertsnn.eval.settings import EvalSettings
from convertsnn.eval.suites import Stage, Suite, run_suite
from convertsnn.snn.encoding import parse_encoder


class StaircaseLinear(nn.Module):
    """A vulnerable linear classifier behind a zero-gradient step: the input is rounded to
    multiples of 1/4 (think of neurons whose eval-mode spike is a hard step without surrogate),
    so every input gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.round(x * 4) / 4)


WHITE_THEN_BLACK = Suite(
    "test", "PGD-10, APGD-CE-10, then Square-300", ("native",), (), False,
    (Stage("pgd", {"steps": 10}), Stage("apgd-ce", {"steps": 10}),
     Stage("square", {"queries": 300}, "none")),
)  # fmt: skip


def test_planted_gradient_masking_is_flagged_and_square_breaks_it(images):
    model = StaircaseLinear().eval()
    y = model(images).argmax(1)
    result = run_suite(WHITE_THEN_BLACK, model, images, y, EvalSettings(16 / 255, progress=False))
    records = result.ensemble.records
    white_after = records[1].robust_after
    flags = {
        f.check: f for f in run_checks(model, images, y, result, EvalSettings(check_samples=32))
    }
    assert flags["gradients"].raised and "masked" in flags["gradients"].message
    assert flags["black-box"].raised
    assert records[2].lowered > 0.3 * len(images)  # Square finds the weakness ...
    assert result.robust < white_after - 0.3  # ... that the white-box runs missed
    assert not flags["determinism"].raised


def test_checks_on_a_spiking_network(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    y = snn(images).argmax(1)
    suite = Suite("t", "", ("native", "bptr"), (), False,
                  (Stage("pgd", {"steps": 10}), Stage("square", {"queries": 50}, "none")))  # fmt: skip
    result = run_suite(suite, snn, images, y, EvalSettings(2 / 255, progress=False))
    flags = {f.check: f for f in run_checks(snn, images, y, result, EvalSettings(check_samples=16))}
    assert not flags["gradients"].raised
    assert not flags["large-eps"].raised
    assert "square-50" in flags["black-box"].message
    assert "more-steps" in flags and result.runs[-1].attack == "apgd-ce"
    assert result.ensemble.records[-1].attacked > 0


BARS: list["RecordingBar"] = []


class RecordingBar:
    """Stands in for tqdm: records what a bar was told (descriptions, steps, disable)."""

    def __init__(self, *args, total=None, desc="", disable=False, **kwargs) -> None:
        self.total, self.steps, self.disable = total, 0, disable
        self.descriptions = [desc]
        BARS.append(self)

    def set_description(self, desc: str) -> None:
        self.descriptions.append(desc)

    def update(self, n: int = 1) -> None:
        self.steps += n

    def __enter__(self) -> "RecordingBar":
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_sanity_checks_show_progress(tiny_resnet, images, monkeypatch):
    from convertsnn.eval import sanity

    monkeypatch.setattr(sanity, "tqdm", RecordingBar)
    BARS.clear()
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    y = snn(images).argmax(1)
    suite = Suite("t", "", ("native",), (), False, (Stage("fgsm"),))
    result = run_suite(suite, snn, images, y, EvalSettings(2 / 255, progress=False))
    run_checks(snn, images, y, result, EvalSettings(check_samples=8, reparametrisation_samples=4))
    (bar,) = BARS
    assert not bar.disable and bar.steps == bar.total == 3
    assert any("large-eps" in d for d in bar.descriptions)
    assert any("reparametrisation" in d for d in bar.descriptions)
    BARS.clear()
    run_checks(snn, images, y, result, EvalSettings(check_samples=8, reparametrisation_samples=0,
                                                   progress=False))  # fmt: skip
    assert BARS[0].disable and BARS[0].total == 2


def test_randomised_models_need_eot(tiny_resnet, images):
    snn = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()
    assert not check_determinism(snn, images, eot=1).raised
    snn.encoder = parse_encoder("poisson")
    assert check_determinism(snn, images, eot=1).raised
    assert not check_determinism(snn, images, eot=10).raised

    class Noisy(nn.Module):
        def forward(self, x):
            return torch.randn(len(x), 10)

    assert check_determinism(Noisy(), images, eot=1).raised


def record(label, blackbox, lowered, zero=0, samples=10, nonfinite=0, mode="native"):
    from convertsnn.attacks.ensemble import RunRecord

    gradients = {} if blackbox else {"samples": samples, "zero": zero, "nonfinite": nonfinite}
    return RunRecord(label, label, mode, blackbox, 10, lowered, 0.0, 0.0, gradients)


def test_flag_rules():
    nonfinite = check_gradients(
        [record("a", False, 1, nonfinite=1, mode="m0"), record("b", False, 1)]
    )
    assert nonfinite.raised and "m0: 0% zero, 1 non-finite" in nonfinite.message
    one = check_gradients([record("a", False, 1, zero=6, mode="m1"), record("b", False, 1)])
    assert one.raised and "m1: 60% zero" in one.message and "1 of 2 gradient modes" in one.message
    few = check_gradients([record("a", False, 1, zero=3, mode="m1"), record("b", False, 1)])
    assert not few.raised and "m1 30%" in few.message
    # the share is over all steps of a mode, not of its worst run
    split = [record("a", False, 1, zero=9, mode="m1"), record("b", False, 1, mode="m1")]
    assert not check_gradients(split).raised
    assert not check_blackbox([record("sq", True, 2)], samples=1000).raised  # 0.2 % tolerance
    assert check_blackbox([record("sq", True, 3)], samples=1000).raised
    twice = check_blackbox([record("sq", True, 2), record("sq", True, 1)], samples=1000)
    assert twice.raised and "sq: 3" in twice.message
    assert check_eps_trend({0.01: 0.5, 0.02: 0.6}, samples=100).raised
    assert not check_eps_trend({0.01: 0.5, 0.02: 0.3}, samples=100).raised


def test_more_steps_breaks_count_in_the_result(images):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()
    y = model(images).argmax(1)
    weak = Suite("weak", "", ("native",), (), False, (Stage("pgd", {"steps": 1, "alpha": 0.001}),),
                 more_steps=2)  # fmt: skip
    result = run_suite(weak, model, images, y, EvalSettings(progress=False))
    first = result.ensemble.records[0].robust_after
    flags = {
        f.check: f for f in run_checks(model, images, y, result, EvalSettings(check_samples=8))
    }
    assert flags["more-steps"].raised and "counted" in flags["more-steps"].message
    assert result.robust < first and result.runs[-1] == Run.of("apgd-ce", steps=2)
    assert result.ensemble.records[-1].note == "more-steps check"
    assert float(result.ensemble.correct.mean()) == result.robust
    without = run_suite(weak, model, images, y, EvalSettings(progress=False, sanity=False))
    assert without.robust == first and len(without.runs) == 1


def test_autoattack_cross_check_passes_on_its_warnings(images):
    from convertsnn.eval.autoattack import run_autoattack

    model = StaircaseLinear().eval()
    x = images[:16]
    y = model(x).argmax(1)
    result = run_autoattack(model, x, y, EvalSettings(16 / 255), version="rand")
    assert any("zero gradient" in w for w in result.warnings), result.warnings
    assert 0 <= result.robust <= 1 and result.correct.shape == (16,)


def test_repeated_black_box_runs_that_still_break_are_flagged():
    from convertsnn.eval.sanity import check_more_queries

    first, again = record("square-5000", True, 20), record("square-5000", True, 5)
    first.attack = again.attack = "square"
    assert check_more_queries([first, again], samples=1000).raised
    assert not check_more_queries([first], samples=1000).raised
    again.lowered = 1
    assert not check_more_queries([first, again], samples=1000).raised


def test_black_box_breaks_escalate_to_more_queries(images, tmp_path):
    from convertsnn.eval.state import StateDir

    shattered = StaircaseLinear().eval()
    y = shattered(images).argmax(1)
    suite = Suite("esc", "", ("native",), (), False,
                  (Stage("pgd", {"steps": 5}), Stage("square", {"queries": 5}, "none")),
                  more_steps=0, more_queries=200)  # fmt: skip
    settings = EvalSettings(16 / 255, progress=False)
    state = StateDir(tmp_path / "state", {"eps": 16 / 255})
    result = run_suite(suite, shattered, images, y, settings, state=state.slot("a", 0))
    records = result.ensemble.records
    assert records[1].lowered > 0  # the first Square run breaks what PGD missed ...
    assert result.runs[-1] == Run.of("square", queries=200, nearest=0.25)  # ... a longer one
    assert records[-1].note == "more-queries escalation" and records[-1].lowered > 0
    assert result.robust == float((result.ensemble.correct > 0).float().mean())
    again = run_suite(suite, shattered, images, y, settings, state=state.slot("a", 0))
    assert again.runs == result.runs and again.robust == result.robust  # resumed, not rerun
    linear = shattered.linear
    y = linear(images).argmax(1)
    tiny = run_suite(suite, linear, images, y, EvalSettings(1e-4, progress=False))
    assert [r.attack for r in tiny.runs] == ["pgd", "square"]  # black-box broke nothing
