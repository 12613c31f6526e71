"""The search on real MNIST, end to end through the CLI: search, resume, show, export, report."""

import io
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from real_mnist import DATA, needs_data

from search.cli import main
from search.engine.data import Split, confirm_data, resolve_data_dir, search_data
from search.engine.train import STEP, Recipe, evaluate
from search.results.tables import choices_table, epoch_cost_table, reached
from search.study import estimate
from search.study import run as run_module
from search.study.config import SearchConfig
from search.study.confirm import (
    _train_seeds,
    confirmation_seconds,
    confirmations,
    seed_rounds,
    selected,
    top_trials,
)
from search.study.objective import Objective, OutOfTime
from search.study.plan import (
    EARLIER_SCREENING_RUNGS,
    SCREENING_RUNGS,
    rungs_for,
    study_screening,
)
from search.study.records import measured_epoch_seconds
from search.study.run import Progress, _requeue_out_of_time, create_or_resume, run_worker
from search.study.sampler import default_max_activations, default_max_macs, sample_architecture
from search.study.storage import open_storage
from space import ZOO, analyse, build, normalise


def test_eta_waits_for_a_trained_trial_and_respects_the_timeout():
    study = optuna.create_study(direction="maximize")
    out = io.StringIO()
    progress = Progress(study, total=50, out=out, timeout=3600)

    def finish(trial):
        study.add_trial(trial)
        progress(study, study.trials[-1])
        return out.getvalue().splitlines()[-1]

    over_budget = create_trial(state=TrialState.PRUNED, user_attrs={"pruned_reason": "over"})
    assert finish(over_budget).endswith("1/50 trials  ETA unknown")
    trained = create_trial(value=98.0, intermediate_values={0: 97.0, 1: 98.0})
    line = finish(trained)
    assert "2/50 trials  ETA 0:" in line  # 48 more trials at this pace end well within the hour
    progress.timeout = 0.0
    assert finish(create_trial(value=98.5, intermediate_values={0: 98.5})).endswith("ETA 0:00:00")


def test_eta_starts_from_the_cost_estimate_when_there_is_one():
    study = optuna.create_study(direction="maximize")
    out = io.StringIO()
    progress = Progress(study, total=11, out=out, estimated_trial_seconds=60.0, workers=2)
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"pruned_reason": "over"}))
    progress(study, study.trials[-1])
    assert out.getvalue().splitlines()[-1].endswith("1/11 trials  ETA 0:05:00")  # 10 x 60 s / 2


@pytest.mark.parametrize("budget", [4_000, 8_000, 20_000])
def test_sampled_specs_are_valid_and_use_the_budget_or_the_compute_cap(budget):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=budget))
    cap, activation_cap = default_max_macs(budget), default_max_activations(budget)
    counts = []

    def objective(trial: optuna.Trial) -> float:
        analysis = analyse(normalise(sample_architecture(trial, budget)))  # raises if invalid
        counts.append(analysis.params)
        assert analysis.params <= trial.params["fill"] * budget
        assert analysis.macs <= cap
        assert analysis.activations <= activation_cap
        # Widest within the limits: none is a wasted proposal (over a limit) or too
        # small to compete (fill >= 0.5 of the budget, or most of a compute cap).
        assert (
            analysis.params >= 0.4 * budget
            or analysis.macs >= 0.6 * cap
            or analysis.activations >= 0.6 * activation_cap
        )
        return 0.0

    study.optimize(objective, n_trials=150)
    # Random proposals: 4,917 of 8,000 under the MACs cap alone, 4,780 under both caps.
    assert statistics.median(counts) >= 0.55 * budget


@pytest.mark.parametrize("count", ["macs", "activations"])
def test_the_compute_caps_shape_the_candidates(count):
    """The same proposal under a lower cap comes out narrower, never over it."""
    params = {"family": "plain", "bias": False, "dropout": 0.0, "stages": 3}
    params |= {"growth2": 2.0, "growth3": 1.0, "squeeze": 0, "head": "conv_gap", "fill": 1.0}
    params |= {f"depth{s}": 2 for s in (1, 2, 3)} | {"padding1": 1, "padding2": 1}
    counted = []
    for cap in (10**8, {"macs": 500_000, "activations": 15_000}[count]):
        trial = optuna.trial.FixedTrial(params)
        caps = {"max_macs": 10**8, "max_activations": 10**8, f"max_{count}": cap}
        spec = sample_architecture(trial, 8000, **caps)
        counted.append(getattr(analyse(normalise(spec)), count))
        assert counted[-1] <= cap
    assert counted[1] < counted[0]


def test_a_retried_candidate_from_an_earlier_space_keeps_its_values_quietly():
    """A trial stopped by --timeout is queued again with the ranges it was drawn from; when
    the space has narrowed a range since, the retry builds the same candidate, without
    Optuna's warning for each changed range."""
    first = optuna.create_study()
    drawn = first.ask()
    spec = sample_architecture(drawn, 3000)
    older = dict(drawn.distributions)
    older["depth2"] = optuna.distributions.IntDistribution(1, 3)  # as the space had it once
    retried = optuna.create_study()
    retried.add_trial(
        create_trial(state=TrialState.WAITING, params=drawn.params, distributions=older)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample_architecture(retried.ask(), 3000) == spec


def test_the_space_holds_ref7676s_ramped_two_stage_shape():
    """Two stages, the first ramping 4 -> 8 -> 16 unpadded, then a max-pool: the shape of
    the hand-made net that the random sample of three-stage nets never reached."""
    params = {"family": "plain", "stages": 2, "bias": False, "dropout": 0.0}
    params |= {"growth2": 1.0, "growth3": 1.0, "fill": 1.0}
    params |= {"depth1": 3, "depth2": 3, "depth3": 1, "padding1": 0, "padding2": 0}
    params |= {"squeeze": 0, "head": "conv_gap"}
    spec = sample_architecture(optuna.trial.FixedTrial(params), 8000)
    widths = [block.get("out") for block in spec["blocks"]]
    assert widths[:3] == [max(4, round(widths[2] / 4)), round(widths[2] / 2), widths[2]]
    assert [block["type"] for block in spec["blocks"]][3] == "maxpool"
    analysis = analyse(normalise(spec))
    assert 7000 < analysis.params <= 8000
    assert analysis.macs <= default_max_macs(8000)


def test_choices_table_counts_each_candidate_once_and_reads_the_first_rung():
    """Both arms of the search benchmark draw the same candidate from one seed: it counts
    once. The 1-epoch rung median comes from rungs searches only, an untrained candidate
    (over the budget) is left out, and a continuous parameter is no choice."""
    distributions = {
        "family": optuna.distributions.CategoricalDistribution(["plain", "separable"]),
        "fill": optuna.distributions.FloatDistribution(0.5, 1.0),
    }

    def add(study, family, spec, values, value=None):
        state = TrialState.PRUNED if value is None else TrialState.COMPLETE
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"family": family, "fill": 0.9},
                distributions=distributions,
                user_attrs={"spec": {"blocks": spec}},
                intermediate_values=values,
            )
        )

    rungs, median = optuna.create_study(), optuna.create_study()
    rungs.set_user_attr("settings", {"pruner": "rungs"})
    median.set_user_attr("settings", {"pruner": "median"})
    add(rungs, "plain", 1, {1: 97.0, 3: 98.5, 9: 99.45}, 99.45)
    add(rungs, "plain", 2, {1: 95.0})
    add(rungs, "separable", 3, {1: 96.0})
    add(rungs, "separable", 4, {})  # over the budget: pruned untrained
    add(median, "plain", 1, {1: 90.0, 2: 99.45}, 99.45)  # the same candidate again
    add(median, "separable", 5, {1: 90.0, 2: 99.2}, 99.2)

    rows = choices_table([rungs, median], target=99.4)
    assert rows == [
        {
            "choice": "family=plain",
            "screened": 2,
            "first_rung": 96.0,
            "full": 1,
            "mean_val": 99.45,
            "best_val": 99.45,
            "reached": 1,
        },
        {
            "choice": "family=separable",
            "screened": 2,
            "first_rung": 96.0,
            "full": 1,
            "mean_val": 99.2,
            "best_val": 99.2,
            "reached": 0,
        },
    ]


def timed_zoo_study(step: str | None = STEP, slower: float = 1.0) -> optuna.Study:
    """The zoo's nets as trained trials that took 10-14 s per epoch on the whole fit split,
    in the order of their activations, each trained twice; a 1-epoch rung on a subset of
    the split took 99 s. ``step``: the training step recorded with them (None: none, as
    before it was recorded); ``slower``: how many times as long every epoch took (the
    same nets on a slower machine)."""
    study = optuna.create_study()
    by_activations = ["ref18594", "ref7676", "ref13010", "ref19354", "ref14874"]
    for seconds, name in enumerate(by_activations, start=10):
        seconds *= slower
        curves = {
            "1-epoch rung on 5,000 images": [{"seconds": 99.0 * slower}],
            "1-epoch rung": [{"seconds": seconds}],
            "full": [{"seconds": seconds}, {"seconds": seconds}],
        }
        for _ in range(2):  # a candidate trained twice counts once
            study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=99.0,
                    user_attrs={
                        "spec": ZOO[name],
                        "curves": curves,
                        "curve": curves["full"],
                        "fit_images": 50_000,
                        **({"step": step} if step else {}),
                    },
                    intermediate_values={1: 98.0},
                )
            )
    return study


def test_epoch_cost_table_ranks_measured_seconds_against_macs_and_activations():
    """rho is 1 for the activations and 0.6 for the MACs, which order the zoo 2, 1, 4, 5,
    3. A rung on a subset of the fit split and a repeated candidate do not count."""
    study = timed_zoo_study()
    [row] = epoch_cost_table({"s": study})
    assert row == {
        "study": "s",
        "candidates": 5,
        "seconds": "10-14",
        "macs_rho": pytest.approx(0.6),
        "activations_rho": pytest.approx(1.0),
    }
    assert epoch_cost_table({"s": study}, minimum=6) == []


def fifteen_epochs_ten_trials(**settings) -> estimate.CostEstimate:
    """The cost estimate of ten 15-epoch trials without a pruner on a 50,000-image split."""
    fit = Split(torch.zeros(0), torch.zeros(50_000, dtype=torch.int64))
    return estimate.estimate_cost(
        fit=fit, device=torch.device("cpu"), epochs=15, trials=10, pruner="none", **settings
    )


def test_a_resumed_search_estimates_its_cost_from_its_own_measured_pace(monkeypatch):
    """A study that has trained candidates gives the estimate its median seconds per
    epoch (subset rungs left out), and no calibration runs; too few candidates do not."""
    study = timed_zoo_study()
    assert measured_epoch_seconds(study) == (12, 5)
    assert measured_epoch_seconds(study, minimum=6) is None
    # A study trained by an older step says nothing of the current step's pace.
    assert measured_epoch_seconds(timed_zoo_study(step=None)) is None
    assert measured_epoch_seconds(timed_zoo_study(step="plain")) is None

    def no_calibration(*args):
        raise AssertionError("calibrated although the study has measured its pace")

    monkeypatch.setattr(estimate, "images_per_second", no_calibration)
    cost = fifteen_epochs_ten_trials(budget=8000, mac_cap=1, activation_cap=1, study=study)
    assert cost.epoch_seconds == 12
    assert cost.search_seconds == 12 * 15 * 10
    assert "~12 s per epoch, measured on 5 candidates of this study" in cost.line()


def test_a_new_search_times_a_typical_candidate_drawn_from_the_space(monkeypatch):
    """A new search's estimate times a typical candidate itself: the draw of median MACs
    from the space at its budget and caps, which at 3k is far below the MACs cap (the
    candidates run out of parameters first). On a CPU it is timed on a worker's threads,
    so the workers do not multiply the figure."""
    budget, mac_cap, activation_cap = 3000, default_max_macs(3000), default_max_activations(3000)
    typical = estimate.typical_candidate(budget, mac_cap, activation_cap)
    assert typical == estimate.typical_candidate(budget, mac_cap, activation_cap)  # reproducible
    assert analyse(typical).params <= budget and analyse(typical).macs < mac_cap / 2
    narrower = estimate.typical_candidate(budget, analyse(typical).macs, activation_cap)
    assert analyse(narrower).macs <= analyse(typical).macs  # within the cap
    timed = []

    def fixed_rate(fit, device, spec, threads=None):
        timed.append((spec, threads))
        return 5000.0  # images per second

    monkeypatch.setattr(estimate, "images_per_second", fixed_rate)
    cost = fifteen_epochs_ten_trials(
        budget=budget, mac_cap=mac_cap, activation_cap=activation_cap, workers=2, threads=1
    )
    assert timed == [(typical, 1)]
    assert cost.epoch_seconds == pytest.approx(50_000 / 5000)
    assert cost.search_seconds == pytest.approx(cost.epoch_seconds * 15 * 10 / 2)
    assert "calibrated" in cost.line()


def test_a_resumed_search_sizes_confirmations_at_its_own_pace():
    """Confirming a trial of an earlier run is sized at the pace of the run resuming the
    study (on a slower machine here) once it has measured a few candidates of its own."""
    study = timed_zoo_study()  # the run before
    time.sleep(0.01)
    started = datetime.now()  # the resumed run
    best = top_trials(study, 1)[0]
    # Two full epochs of 50,000 images at 10 s, scaled to 60,000 images; 3 seeds at once.
    assert confirmation_seconds(study, best, 3, None, 3, started) == pytest.approx(24.0)
    for trial in timed_zoo_study(slower=2.5).trials:  # the same nets, 2.5x as long
        study.add_trial(trial)
    assert confirmation_seconds(study, best, 3, None, 3, started) == pytest.approx(60.0)
    # Without a run (budgetnas confirm), and for a trial of this run, its own seconds.
    assert confirmation_seconds(study, best, 3, None, 3, None) == pytest.approx(24.0)
    again = study.trials[best.number + 10]  # the same net, trained in the resumed run
    assert confirmation_seconds(study, again, 3, None, 3, started) == pytest.approx(60.0)


def test_rungs_fit_the_epoch_cap_and_step_as_successive_halving_expects():
    assert [(r.epochs, r.images, r.step) for r in rungs_for(15, 50_000)] == [
        (1, None, 1),
        (15, None, 3),
    ]
    assert [(r.epochs, r.step) for r in rungs_for(2, 50_000)] == [(1, 1), (2, 3)]
    assert [(r.epochs, r.step) for r in rungs_for(1, 50_000)] == [(1, 1)]
    earlier = rungs_for(15, 50_000, EARLIER_SCREENING_RUNGS)
    assert [(r.epochs, r.step) for r in earlier] == [(1, 1), (3, 3), (15, 9)]
    assert [(r.epochs, r.step) for r in rungs_for(3, 50_000, EARLIER_SCREENING_RUNGS)] == [
        (1, 1),
        (3, 3),
    ]


def test_a_new_study_records_its_plan_and_one_from_before_keeps_two_rungs(tmp_path):
    """Resumed under another plan, a study would compare a full training of its own
    with another's 3-epoch rung at the same step."""
    storage = f"sqlite:///{tmp_path}/s.db"
    new = create_or_resume(SearchConfig(storage=storage, study="new"))
    assert study_screening(new) == SCREENING_RUNGS == ((1, None),)
    assert study_screening(create_or_resume(SearchConfig(storage=storage, study="new"))) == (
        (1, None),
    )
    # A study created before plans were recorded: its settings, no plan.
    before = optuna.create_study(study_name="before", storage=storage, direction="maximize")
    before.set_user_attr("settings", {"budget": 8000, "epochs": 15})
    resumed = create_or_resume(SearchConfig(storage=storage, study="before"))
    assert study_screening(resumed) == EARLIER_SCREENING_RUNGS == ((1, None), (3, None))


@pytest.mark.parametrize(
    ("budget", "max_macs", "max_activations", "reason"),
    [
        # below the narrowest candidate the sampler can make
        (100, 10**9, 10**9, "parameters > budget 100"),
        # caps no 3x3 conv at 28x28 fits under
        (10**6, 1_000, 10**9, "MACs > cap 1,000"),
        (10**6, 10**9, 1_000, "activations > cap 1,000"),
    ],
)
def test_candidates_over_the_budget_or_a_cap_are_pruned_before_training(
    tmp_path, monkeypatch, budget, max_macs, max_activations, reason
):
    def no_training(*args, **kwargs):
        raise AssertionError("a candidate over the budget or the cap must not train")

    monkeypatch.setattr("search.study.objective.train", no_training)
    config = SearchConfig(
        budget=budget,
        max_macs=max_macs,
        max_activations=max_activations,
        epochs=1,
        trials=5,
        storage=f"sqlite:///{tmp_path}/s.db",
        artifacts=str(tmp_path / "artifacts"),
    )
    study = create_or_resume(config)
    empty = torch.empty(0)
    objective = Objective(config, empty, empty, torch.device("cpu"))  # data is never touched
    study.optimize(objective, n_trials=5)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 5
    for trial in trials:
        assert reason in trial.user_attrs["pruned_reason"]
        # Every violation reaches TPE; positive is a violation, as Optuna reads constraints.
        assert trial.constraints == {
            "params_over_budget": trial.user_attrs["params"] - budget,
            "macs_over_cap": trial.user_attrs["macs"] - max_macs,
            "activations_over_cap": trial.user_attrs["activations"] - max_activations,
        }
        assert max(trial.constraints.values()) > 0
        assert "train_seconds" not in trial.user_attrs  # it cost no training at all


def tiny_config(tmp_path: Path, **settings) -> SearchConfig:
    """One trial of 1- and 3-epoch rungs on 300 images, in a study under ``tmp_path``."""
    return SearchConfig(
        budget=8000,
        epochs=3,
        trials=1,
        storage=f"sqlite:///{tmp_path}/s.db",
        artifacts=str(tmp_path / "artifacts"),
        data_dir=DATA,
        train_subset=300,
        val_size=200,
        epoch_lines=False,
        **settings,
    )


def one_tiny_trial(tmp_path: Path, seconds_left: float, **settings) -> optuna.Study:
    """A study after one ``tiny_config`` trial, with ``seconds_left`` before the
    objective's deadline."""
    config = tiny_config(tmp_path, **settings)
    study = create_or_resume(config)
    study.pruner = (
        optuna.pruners.NopPruner()
    )  # every rung promotes: these tests are about the clock
    fit, validation = search_data(DATA, "cpu", 200, 0, 300)
    objective = Objective(config, fit, validation, torch.device("cpu"))
    objective.deadline = time.monotonic() + seconds_left
    study.optimize(objective, n_trials=1, catch=(OutOfTime,))
    return study


@needs_data
@pytest.mark.parametrize(
    ("recorded", "climb"),
    [
        (True, ["1-epoch rung", "full"]),  # a new study: one screening rung
        (False, ["1-epoch rung", "3-epoch rung", "full"]),  # a study from before plans
    ],
)
def test_a_trial_climbs_the_rungs_its_study_records(tmp_path, recorded, climb):
    config = SearchConfig(
        budget=8000, epochs=4, trials=1, storage=f"sqlite:///{tmp_path}/s.db",
        artifacts=str(tmp_path / "artifacts"), data_dir=DATA, train_subset=300,
        val_size=200, epoch_lines=False,
    )  # fmt: skip
    if not recorded:
        before = optuna.create_study(
            study_name=config.study_name, storage=config.storage, direction="maximize"
        )
        before.set_user_attr("settings", {"budget": 8000, "epochs": 4})
    study = create_or_resume(config)
    study.pruner = optuna.pruners.NopPruner()  # every rung promotes: this is about the plan
    fit, validation = search_data(DATA, "cpu", 200, 0, 300)
    study.optimize(Objective(config, fit, validation, torch.device("cpu")), n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.COMPLETE
    assert list(trial.user_attrs["curves"]) == climb
    assert [len(curve) for curve in trial.user_attrs["curves"].values()] == [
        1,
        *([3] * (len(climb) - 2)),
        4,
    ]


@needs_data
def test_a_rung_that_would_pass_the_timeout_is_not_started_and_the_trial_is_queued(tmp_path):
    study = one_tiny_trial(tmp_path, 0)  # already past: only the first rung may run
    _requeue_out_of_time(study, 0)
    stopped, queued = study.get_trials()
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("--timeout: no time left for the 3-epoch")
    assert list(stopped.user_attrs["curves"]) == ["1-epoch rung"]  # it trained that one only
    assert queued.state == TrialState.WAITING and queued.params == stopped.params


@needs_data
def test_a_candidate_the_timeout_stopped_waits_for_the_resume_not_this_run(tmp_path, monkeypatch):
    """Its copy is queued when the run ends: run again in the same run, it would retrain
    the rungs it had just trained and be stopped at the same rung again."""
    # Every rung promotes (a lone trial would wait for competitors): this is about the clock.
    monkeypatch.setattr(run_module, "make_pruner", lambda *_: optuna.pruners.NopPruner())
    # No 3-epoch rung fits beside a million-seed confirmation: every promoted trial stops.
    config = tiny_config(tmp_path, timeout=15, confirm_seeds=1_000_000)
    study = create_or_resume(config)
    run_worker(config)
    stopped = study.get_trials(states=(TrialState.FAIL,))
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert stopped and all(t.user_attrs["fail_reason"].startswith("--timeout") for t in stopped)
    ran = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert not any("failed_trial" in t.system_attrs for t in ran)  # no copy ran here
    assert [t.system_attrs["failed_trial"] for t in queued] == [t.number for t in stopped]
    assert [t.params for t in queued] == [t.params for t in stopped]


@needs_data
def test_the_full_rung_waits_unless_its_confirmation_fits_too(tmp_path):
    """A search under --timeout must end with time to confirm what it found: the full
    rung of a candidate that could not also be confirmed in time is not started."""
    # An hour is ample for the 3-epoch rung alone, not for a million-seed confirmation.
    study = one_tiny_trial(tmp_path, 3600, timeout=3600, confirm_seeds=1_000_000)
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason.startswith("--timeout: no time left for the 3-epoch")
    assert "and a confirmation" in reason


@needs_data
def test_a_worker_counts_the_timeout_from_the_start_of_the_run(tmp_path):
    """Spawned workers start after the data loading and the cost estimate; the
    confirmation after them counts --timeout from the start of the run, so they must too:
    a worker whose run began a timeout ago starts no trial."""
    config = tiny_config(tmp_path, timeout=600, started_at=time.time() - 600)
    assert config.deadline() <= time.monotonic()
    study = create_or_resume(config)
    run_worker(config)
    assert study.get_trials() == []
    fresh = SearchConfig(timeout=600)  # a hand-started worker counts from its own start
    assert 599 < fresh.deadline() - time.monotonic() <= 600


def stored_study(folder: Path) -> optuna.Study:
    """The e2e search's study, read back from its SQLite file."""
    storage = open_storage(f"sqlite:///{folder}/studies.db", heartbeat_interval=None)
    return optuna.load_study(study_name="mnist-8000p-1e", storage=storage)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One real search: warm-started ref7676 plus sampled trials, 1 epoch on a subset."""
    if not DATA:
        pytest.skip("real MNIST not available")
    folder = tmp_path_factory.mktemp("search")
    args = [
        "search", "--budget", "8000", "--epochs", "1", "--trials", "3", "--warm-start",
        "--train-subset", "3000", "--val-size", "1000", "--top-k", "1", "--seeds", "2",
        "--target", "10", "--pruner", "none", "--no-transfer", "--use-all-time",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the default storage and artifacts land in the working directory
        assert main(args) == 0
        yield folder, args


@needs_data
def test_search_records_trials_confirms_and_selects(searched):
    folder, _ = searched
    study = stored_study(folder)
    trials = study.get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    first = trials[0]
    assert first.user_attrs["zoo"] == "ref7676" and first.user_attrs["params"] == 7_676
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["params"] <= 8_000
            assert len(trial.user_attrs["curve"]) == 1
            assert trial.user_attrs["receptive_field"] > 1
            assert (folder / "artifacts" / trial.user_attrs["weights"]).is_file()
    [confirmation] = confirmations(study).values()
    assert len(confirmation.test_accuracy) == 2
    assert selected(study) == [confirmation] if confirmation.mean >= 10 else selected(study) == []


@needs_data
def test_rerunning_the_command_resumes_the_study(searched, capsys):
    folder, args = searched
    storage = open_storage(f"sqlite:///{folder}/studies.db", heartbeat_interval=None)
    before = len(optuna.load_study(study_name="mnist-8000p-1e", storage=storage).trials)
    assert main([*args, "--no-confirm"]) == 0  # the 3 trials are there: nothing to run
    assert len(optuna.load_study(study_name="mnist-8000p-1e", storage=storage).trials) == before
    more = list(args)
    more[more.index("--trials") + 1] = "4"
    assert main([*more, "--no-confirm"]) == 0
    study = optuna.load_study(study_name="mnist-8000p-1e", storage=storage)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    assert "trial    3:" in capsys.readouterr().out


@needs_data
def test_show_lists_the_top_trials(searched, capsys):
    assert main(["show", "mnist-8000p-1e"]) == 0
    out = capsys.readouterr().out
    assert "7,676" in out and "COMPLETE" in out and "test mean %" in out


@needs_data
def test_export_writes_a_standalone_module_whose_weights_reproduce_its_figures(searched):
    folder, _ = searched
    study = stored_study(folder)
    [confirmation] = confirmations(study).values()
    out = folder / "exported" / "winner.py"
    code = main(["export", "mnist-8000p-1e", "--trial", str(confirmation.trial), "--out", str(out)])
    assert code == 0 and out.is_file() and out.with_suffix(".pt").is_file()

    # Standalone: a fresh interpreter where the project's packages cannot be imported.
    script = (
        "import sys; sys.modules['space'] = None; sys.modules['search'] = None; "
        f"sys.path.insert(0, {str(out.parent)!r}); import winner; net = winner.load(); "
        "print(winner.PARAMS, winner.METRICS['weights_test_accuracy'])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    params, recorded = result.stdout.split()
    assert int(params) == confirmation.params

    # The shipped weights score exactly what METRICS says on the real test set.
    sys.path.insert(0, str(out.parent))
    try:
        import winner
    finally:
        sys.path.remove(str(out.parent))
    _, test = confirm_data(resolve_data_dir(None), "cpu")
    assert abs(evaluate(winner.load(), test) - float(recorded)) < 0.01
    assert float(recorded) in confirmation.test_accuracy

    # Refused the second time, nothing changed; accepted with --force.
    before = out.read_bytes()
    assert (
        main(["export", "mnist-8000p-1e", "--trial", str(confirmation.trial), "--out", str(out)])
        == 2
    )
    assert out.read_bytes() == before
    assert main(["export", "mnist-8000p-1e", "--trial", "0", "--out", str(out), "--force"]) == 0


@needs_data
def test_export_of_a_built_net_matches_the_search_weights(searched):
    folder, _ = searched
    study = stored_study(folder)
    trial = study.trials[0]
    out = folder / "exported" / "first.py"
    assert main(["export", "mnist-8000p-1e", "--trial", "0", "--out", str(out)]) == 0
    state = torch.load(folder / "artifacts" / trial.user_attrs["weights"], weights_only=True)
    net = build(trial.user_attrs["spec"]).eval()
    net.load_state_dict(state)
    sys.path.insert(0, str(out.parent))
    try:
        import first
    finally:
        sys.path.remove(str(out.parent))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(first.load()(x), net(x), atol=1e-5)


@needs_data
def test_report_is_written(searched):
    folder, _ = searched
    assert main(["report", "mnist-8000p-1e", "--out", str(folder / "report.html")]) == 0
    html = (folder / "report.html").read_text()
    assert "plotly" in html.lower() and "mnist-8000p-1e" in html


def test_show_says_how_far_each_trial_trained():
    curve = [{"epoch": e, "val_accuracy": 90.0, "seconds": 1.0} for e in (1, 2, 3)]
    complete = create_trial(value=98.0, user_attrs={"curve": curve})
    at_rung = create_trial(
        state=TrialState.PRUNED,
        intermediate_values={1: 90.0, 3: 95.0},
        user_attrs={"curves": {"1-epoch rung": curve[:1], "3-epoch rung": curve}},
    )
    at_epoch = create_trial(
        state=TrialState.PRUNED, intermediate_values={1: 90.0}, user_attrs={"curve": curve[:1]}
    )
    over = create_trial(state=TrialState.PRUNED, user_attrs={"pruned_reason": "> budget"})
    assert [reached(t) for t in (complete, at_rung, at_epoch, over)] == [
        "3 epochs",
        "3-epoch rung",
        "epoch 1",
        "-",
    ]


def test_a_confirmation_round_with_fewer_seeds_than_workers_takes_every_thread():
    assert seed_rounds(3, 2, 2) == [[(0, 1), (1, 1)], [(2, 2)]]
    assert seed_rounds(4, 2, 8) == [[(0, 4), (1, 4)], [(2, 4), (3, 4)]]
    assert seed_rounds(2, 4, 2) == [[(0, 1), (1, 1)]]
    assert seed_rounds(3, 3, 2) == [[(0, 1), (1, 1), (2, 1)]]  # never under one thread


@needs_data
def test_confirmation_trains_seeds_side_by_side_in_processes():
    train_set, test_set = confirm_data(DATA, "cpu", train_subset=300)
    runs = _train_seeds(
        normalise(ZOO["ref7676"]),
        Recipe(epochs=1),
        2,
        train_set,
        test_set,
        device="cpu",
        precision="auto",
        progress=False,
        out=io.StringIO(),
        workers=2,
        data=(DATA, 300),
    )
    assert len(runs) == 2 and all(0 <= run.accuracy <= 100 for run in runs)
    # Each process trained its own seed: the two initialisations differ.
    first, second = (run.state_dict["conv1.weight"] for run in runs)
    assert not torch.equal(first, second)
