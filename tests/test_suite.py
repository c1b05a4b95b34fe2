"""The worst-case ensemble, suites, resumable state and the `evaluate` command's suite options."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convertsnn import convert, save_snn
from convertsnn.attacks.ensemble import (
    Run,
    WorstCase,
    lowered_beyond_noise,
    mean_moved_beyond_noise,
)
from convertsnn.attacks.gradient_modes import SEED000_MODES, SEED001_MODES
from convertsnn.cli import main
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.settings import EvalSettings, default_eot
from convertsnn.eval.state import StateDir
from convertsnn.eval.suites import (
    FULL,
    QUICK,
    S001,
    SHARP_MODES,
    STANDARD,
    Stage,
    Suite,
    candidate_modes,
    prepare_runs,
    rank_modes,
    run_suite,
)
from convertsnn.snn.encoding import parse_encoder
from tests.conftest import write_npz


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()


@pytest.fixture
def snn(tiny_resnet, images):
    return convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max").eval()


def test_worst_case_is_per_sample_and_only_survivors_go_on(images):
    model = linear_model()
    y = model(images).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # four samples are wrong from the start
    runs = [Run.of("fgsm"), Run.of("pgd", steps=10), Run.of("square", queries=50)]
    result = WorstCase(model, EvalSettings(4 / 255, progress=False)).run(images, y, runs)
    fgsm, pgd, square = result.records
    assert fgsm.attacked == len(images) - 4
    assert pgd.attacked == fgsm.attacked - fgsm.lowered
    assert square.attacked == pgd.attacked - pgd.lowered
    assert result.robust == float(result.correct.mean()) <= pgd.robust_after
    broken = result.correct == 0
    assert (model(result.x_adv[broken]).argmax(1) != y[broken]).all()
    assert set(result.breaker[broken].tolist()) <= {-1, 0, 1, 2}
    assert (result.breaker[:4] == -1).all()  # wrong when clean, never attacked


class CoinFlip(nn.Module):
    """Right on each image with probability 1/2 per draw, wherever the image is (its input
    gradient is zero, not missing)."""

    def forward(self, x):
        right = torch.rand(len(x)) < 0.5
        logits = torch.stack([right.float(), (~right).float()], dim=1)
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)


def test_runs_count_only_drops_beyond_the_noise_of_the_draws():
    x, y = torch.rand(64, 1, 4, 4), torch.zeros(64, dtype=torch.long)
    torch.manual_seed(0)
    runs = [Run.of("square", queries=3)] * 3  # eps 0: each run re-estimates the same points
    result = WorstCase(CoinFlip(), EvalSettings(0.0, eot=20, progress=False)).run(x, y, runs)
    assert result.robust < result.clean - 0.05  # the minimum of noisy estimates falls...
    assert all(r.lowered == 0 for r in result.records)  # ...but no run broke anything
    before, after = (
        torch.tensor([1.0, 0.6, 0.5, 0.05, 1.0]),
        torch.tensor([0.0, 0.0, 0.4, 0.0, 0.95]),
    )
    assert lowered_beyond_noise(before, after, 20).tolist() == [True, True, False, False, False]
    assert lowered_beyond_noise(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), 1).tolist() == [
        True,
        False,
    ]


def test_a_mean_moves_only_beyond_one_sample_and_the_noise_of_the_draws():
    right, wrong = torch.ones(20), torch.zeros(20)
    one_less = right.clone()
    one_less[0] = 0
    two_less = one_less.clone()
    two_less[1] = 0
    assert not mean_moved_beyond_noise(right, one_less, 1)  # deterministic: one sample is allowed
    assert mean_moved_beyond_noise(right, two_less, 1)
    assert mean_moved_beyond_noise(right, wrong, 20)
    half, lower = torch.full((20,), 0.5), torch.full((20,), 0.4)  # 2 samples' worth, in the noise
    assert not mean_moved_beyond_noise(half, lower, 20)
    assert mean_moved_beyond_noise(half, lower, 2000)  # the same move, estimated from many draws


def test_resume_gives_the_same_numbers(images, tmp_path):
    model = linear_model()
    y = model(images).argmax(1)
    runs = [Run.of("pgd", steps=3), Run.of("apgd-ce", steps=5)]
    settings = EvalSettings(2 / 255, batch_size=8, seed=3, progress=False)
    full = WorstCase(model, settings).run(images, y, runs)

    saved = []

    class Interrupt(Exception):
        pass

    def checkpoint(state):
        saved.append({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
        if len(saved) == 3:  # stop in the middle of the first run
            raise Interrupt

    with pytest.raises(Interrupt):
        WorstCase(model, settings, checkpoint=checkpoint).run(images, y, runs)
    resumed = WorstCase(model, settings).run(images, y, runs, resume=saved[-1])
    assert torch.equal(resumed.correct, full.correct)
    cost = [(r.forward, r.backward) for r in full.records]
    assert [r.lowered for r in resumed.records] == [r.lowered for r in full.records]
    assert [(r.forward, r.backward) for r in resumed.records] == cost and cost[0][0] > 0


def test_runs_count_their_image_passes_and_time(images):
    model = linear_model()
    y = model(images).argmax(1)
    runs = [Run.of("pgd", steps=20), Run.of("fgsm")]
    settings = EvalSettings(0.5 / 255, batch_size=12, progress=False)
    pgd, fgsm = WorstCase(model, settings).run(images, y, runs).records
    # per image: 20 steps (forward + backward), PGD's final check, the ensemble's check
    assert (pgd.forward, pgd.backward) == (22 * len(images), 20 * len(images))
    assert (fgsm.forward, fgsm.backward) == (2 * fgsm.attacked, fgsm.attacked)
    assert fgsm.attacked > 0 and pgd.seconds > 0
    assert pgd.breaks_per_second == pgd.lowered / pgd.seconds


def test_passes_of_the_ann_proxy_and_of_a_transfer_source_count_once(snn, images):
    y = snn(images).argmax(1)
    runs = [Run.of("transfer", steps=3), Run.of("fgsm", "ann")]
    transfer, fgsm = (
        WorstCase(snn, EvalSettings(0.5 / 255, progress=False)).run(images, y, runs).records
    )
    # APGD-3 on the source ANN (the SNN in ann mode: one pass, not two): 4 gradients, the check
    assert (transfer.forward, transfer.backward) == (5 * len(images), 4 * len(images))
    # ann mode: the proxy's forward + backward, the SNN's own forward for the loss, the check
    assert fgsm.attacked > 0
    assert (fgsm.forward, fgsm.backward) == (3 * fgsm.attacked, fgsm.attacked)


def test_suite_cost_is_a_ratio_to_one_pgd20_run(images):
    model = linear_model()
    y = model(images).argmax(1)
    suite = Suite("t", "", ("native",), (), False, (Stage("pgd", {"steps": 20}),), more_steps=0)
    result = run_suite(suite, model, images, y, EvalSettings(0.5 / 255, progress=False))
    summary = result.summary()
    assert summary["cost"]["pgd20_passes"] == 41 * len(images)
    assert summary["cost"]["pgd20_ratio"] == 42 / 41  # PGD-20's own passes plus the check
    assert summary["runs"][0]["breaks_per_second"] == result.ensemble.records[0].breaks_per_second


def test_probe_passes_count_and_survive_a_resume(snn, images, tmp_path):
    y = snn(images).argmax(1)
    suite = Suite("t", "", ("native", "bptr"), (), True, (Stage("fgsm", modes="top:1"),),
                  more_steps=0)  # fmt: skip
    state = StateDir(tmp_path / "state", {})
    settings = EvalSettings(2 / 255, probe_samples=8, progress=False)
    first = run_suite(suite, snn, images, y, settings, state=state.slot("a", 0))
    again = run_suite(suite, snn, images, y, settings, state=state.slot("a", 0))
    # the probe: the clean check of all images, then in 2 modes on 8 images PGD-10 (10 steps,
    # its final check) and the probe's look at the logits
    assert first.probe_passes.forward == len(images) + 2 * 8 * 12
    assert first.probe_passes.backward == 2 * 8 * 10
    assert again.summary()["cost"] == first.summary()["cost"]


def test_state_directory_round_trip_and_settings_check(images, tmp_path):
    model = linear_model()
    y = model(images).argmax(1)
    suite = Suite("t", "", ("native",), (), False, (Stage("pgd", {"steps": 2}),))
    state = StateDir(tmp_path / "state", {"eps": 0.01})
    settings = EvalSettings(0.01, progress=False)
    first = run_suite(suite, model, images, y, settings, state=state.slot("a", 0))
    again = run_suite(suite, model, images, y, settings, state=state.slot("a", 0))
    assert torch.equal(first.ensemble.correct, again.ensemble.correct)
    assert again.ensemble.records[0].seconds == first.ensemble.records[0].seconds  # not rerun
    with pytest.raises(ConvertSNNError, match="other settings"):
        StateDir(tmp_path / "state", {"eps": 0.02})


def test_suites_grow_in_strength():
    assert len(QUICK.candidates) < len(STANDARD.candidates) < len(FULL.candidates)
    assert {"bptr", "ann"} <= set(QUICK.candidates)
    assert set(SEED001_MODES) | set(SEED000_MODES) | set(SHARP_MODES) <= set(FULL.candidates)
    for suite in (QUICK, STANDARD, FULL):
        assert suite.stages[-1].attack == "square"  # black-box last: the flag needs it
        assert suite.adaptive and suite.more_steps
        assert set(SHARP_MODES) <= set(suite.candidates)
        assert suite.stages[1 if suite is not FULL else 2].attack == "pgd-search"  # after FGSM
    assert "autoattack" in {st.attack for st in FULL.stages}
    assert S001.candidates == SEED001_MODES and S001.families and not S001.probe
    assert [st.attack for st in S001.stages] == ["fgsm", "rfgsm", "pgd", "apgd-ce", "apgd-dlr",
                                                 "apgd-t"]  # fmt: skip


def test_probe_counts_a_random_models_broken_samples_in_expectation():
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 4, 4), torch.zeros(64, dtype=torch.long)
    (score,) = rank_modes(CoinFlip(), x, y, ["native"], EvalSettings(eps=0.1, eot=20), steps=1)
    assert abs(score.broken - 32) < 6  # each sample broken in half the draws, not in none


def test_probe_ranks_modes_and_keeps_one_adaptive(snn, images):
    y = snn(images).argmax(1)
    modes = candidate_modes(STANDARD, snn)
    assert modes[0] == "bptt:triangle:1" and sum(m.startswith("adaptive") for m in modes) == 3
    runs, ranking = prepare_runs(STANDARD, snn, images, y, EvalSettings(probe_samples=8))
    assert len(ranking) == len(modes)
    assert [(s.broken, s.loss) for s in ranking] == sorted(
        [(s.broken, s.loss) for s in ranking], reverse=True
    )
    assert len({r.mode for r in runs if r.mode.startswith("adaptive")}) <= 1
    pgd_modes = [r.mode for r in runs if r.attack == "pgd-search"]
    assert len(pgd_modes) == 3 and pgd_modes[0] == ranking[0].mode
    assert all(s.samples == 8 and s.spread >= 0 for s in ranking)
    assert [r.attack for r in runs][-2:] == ["transfer", "square"]


def test_suites_on_a_plain_classifier_use_its_own_gradient(images):
    model = linear_model()
    y = model(images).argmax(1)
    runs, _ = prepare_runs(STANDARD, model, images, y, EvalSettings())
    assert {r.mode for r in runs} == {"native"}
    assert "transfer" not in {r.attack for r in runs}


@pytest.fixture
def snn_file(snn, tmp_path):
    return save_snn(snn, tmp_path / "snn.safetensors")


@pytest.fixture
def data(tmp_path):
    return write_npz(tmp_path / "data.npz", n=12, shape=(12, 12, 3))


def evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args), "--device", "cpu"])


def test_cli_quick_suite_with_report_and_resume(snn_file, data, tmp_path):
    out, report, state = tmp_path / "r.json", tmp_path / "report", tmp_path / "state"
    args = [snn_file, "--data", data, "-T", "2,4", "--suite", "quick", "--eps", "4/255,16/255",
            "--attack-timesteps", "4", "--out", out, "--resume", state]  # fmt: skip
    result = evaluate(*args, "--report", report)
    assert result.exit_code == 0, result.output
    assert "quick" in result.output and "determinism" in result.output
    document = json.loads(out.read_text())
    assert [r["model"] for r in document["rows"]] == ["ANN", "SNN T=2", "SNN T=4"]
    snn4 = document["rows"][2]
    assert set(snn4["details"]) == set(snn4["robust"]) and not document["rows"][1]["robust"]
    detail = snn4["details"][f"{4 / 255:.6g}"]
    assert {f["check"] for f in detail["flags"]} >= {"gradients", "black-box", "determinism"}
    assert detail["runs"][0]["label"] == "fgsm [bptt:triangle:1]"
    assert (report / "report.md").is_file() and (report / "accuracy_vs_eps.png").is_file()
    assert (report / "accuracy_vs_T.png").is_file()
    assert "## SNN T=4" in (report / "report.md").read_text()
    again = evaluate(*args)
    assert again.exit_code == 0, again.output
    resumed = json.loads(out.read_text())["rows"][2]
    assert resumed["robust"] == snn4["robust"]
    assert resumed["details"][f"{4 / 255:.6g}"]["cost"] == detail["cost"]
    assert detail["cost"]["pgd20_ratio"] > 0 and "cost:" in result.output
    assert {"seconds", "breaks_per_second", "forward", "backward"} <= set(detail["runs"][0])
    changed = evaluate(*args[:-2], "--resume", state, "--seed", "1")
    assert changed.exit_code != 0 and "other settings" in changed.output


def test_cli_single_attack_in_a_gradient_mode(snn_file, data, tmp_path):
    out = tmp_path / "r.json"
    result = evaluate(snn_file, "--data", data, "--attack", "apgd-ce", "--steps", "3",
                      "--gradient", "bptr", "--no-ann", "--no-sanity", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(out.read_text())["rows"][0]["details"][f"{8 / 255:.6g}"]["runs"]
    assert [r["label"] for r in runs] == ["apgd-ce-3 [bptr]"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "quick", "--attack", "pgd"], "not both"),
        (["--suite", "quick", "--gradient", "bptr"], "single --attack"),
        (["--attack", "cw"], "unknown attack"),
        (["--attack", "pgd", "--gradient", "bptx"], "unknown gradient mode"),
        (["--attack", "square", "--gradient", "bptr"], "black-box"),
        (["--suite", "quick", "--eps", "-1"], "--eps must be >= 0"),
        (["--resume", "somewhere"], "need --suite or --attack"),
        (["--suite", "quick", "--autoattack", "standard", "--autoattack-mode", "ann"], "'ann'"),
    ],
)
def test_cli_bad_evaluation_options(snn_file, data, args, message):
    result = evaluate(snn_file, "--data", data, *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output.splitlines()[-1], result.output


def test_cli_stochastic_model_uses_eot(snn, data, tmp_path):
    from convertsnn.snn.encoding import parse_encoder

    snn.encoder = parse_encoder("poisson")
    path = save_snn(snn, tmp_path / "poisson.safetensors")
    out = tmp_path / "r.json"
    result = evaluate(path, "--data", data, "--attack", "fgsm", "--eot", "4", "--no-ann",
                      "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["eot"] == 4
    flags = document["rows"][0]["details"][f"{8 / 255:.6g}"]["flags"]
    determinism = next(f for f in flags if f["check"] == "determinism")
    assert not determinism["raised"] and "4 draws" in determinism["message"]


def test_cli_clean_only_report(snn_file, data, tmp_path):
    result = evaluate(snn_file, "--data", data, "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "clean accuracy only" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.parametrize(
    "bad, message",
    [({"eps": -1}, "eps must be >= 0"), ({"norm": "l3"}, "unknown norm"),
     ({"eot": 0}, "at least 1"), ({"probe_samples": -1}, "must be >= 0"),
     ({"autoattack": "plus"}, "unknown AutoAttack version")],
)  # fmt: skip
def test_eval_settings_refuse_bad_values_in_one_line(bad, message):
    with pytest.raises(ConvertSNNError, match=message) as err:
        EvalSettings(**bad)
    assert "\n" not in str(err.value)


def test_default_eot_follows_the_encoder(snn):
    assert default_eot(snn) == 1 and default_eot(linear_model()) == 1
    snn.encoder = parse_encoder("poisson")
    assert default_eot(snn) == 20
