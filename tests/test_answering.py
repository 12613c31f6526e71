"""How a search gets to its answer: transfer from known nets, ASHA's promotion rule, and
stopping at the first confirmed net that clears the target."""

import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from real_mnist import DATA, needs_data

from search.engine.data import search_data
from search.study.config import SearchConfig
from search.study.confirm import confirmations, selected
from search.study.objective import Objective, OutOfTime
from search.study.promotion import (
    RESUMES,
    STOPPED_AT_RUNG,
    RungPromotion,
    ranks_in_top,
    take_up_promotion,
)
from search.study.run import (
    QUEUED_ATTRS,
    _requeue_out_of_time,
    create_or_resume,
    finished_count,
    run_search,
)
from search.study.sampler import default_max_activations, default_max_macs
from search.study.transfer import queue_known_nets, rescaled, shipped_models, study_nets
from space import analyse, normalise

SHIPPED = {
    "mnist_4000p_15e": 3580,
    "mnist_8000p_15e": 4659,
    "mnist_8000p_15e_995": 7039,
    "mnist_20000p_20e": 19519,
}


def caps(budget: int) -> tuple[int, int]:
    return default_max_macs(budget), default_max_activations(budget)


def test_the_shipped_models_are_read_without_importing_them():
    known = {net.origin.removeprefix("shipped model "): net for net in shipped_models()}
    assert {name: net.params for name, net in known.items()} == SHIPPED
    assert known["mnist_8000p_15e"].budget == 8000 and known["mnist_8000p_15e"].test_mean > 99.4


@pytest.mark.parametrize("budget", [3000, 6000, 8000, 12000])
def test_a_known_net_is_rescaled_within_the_budget_and_caps(budget):
    for net in shipped_models():
        spec = rescaled(net, budget, *caps(budget))
        analysis = analyse(spec)
        assert analysis.params <= budget
        assert analysis.macs <= default_max_macs(budget)
        assert analysis.activations <= default_max_activations(budget)
        # It keeps the share of the budget it used, and its own size when that fits,
        # unless a cap stops it first.
        share = net.params / net.budget * budget
        capped = analysis.activations > 0.95 * default_max_activations(budget)
        assert capped or analysis.params >= 0.85 * min(budget, max(net.params, share))


def test_a_net_that_fits_is_kept_as_it_is():
    [net] = [n for n in shipped_models() if n.origin == "shipped model mnist_8000p_15e"]
    assert rescaled(net, 6000, *caps(6000)) == normalise(net.spec)


def test_known_nets_are_queued_nearest_budget_first_with_their_origin():
    study = optuna.create_study(direction="maximize")
    queued = queue_known_nets(study, shipped_models(), 6000, *caps(6000))
    assert len(queued) == 3
    # Found at 8k, the better confirmed first; the 4k net is the 99.5% one's shape, not queued.
    assert queued[0].startswith("rescaled from shipped model mnist_8000p_15e_995 (7,039 -> ")
    assert queued[1] == "shipped model mnist_8000p_15e, as it is (4,659 params)"
    assert queued[2].startswith("rescaled from shipped model mnist_20000p_20e (19,519 -> ")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["origin"] for t in waiting] == queued
    assert all(analyse(t.user_attrs["given_spec"]).params <= 6000 for t in waiting)


def test_a_study_transfers_its_selected_net_not_itself():
    storage = optuna.storages.InMemoryStorage()
    [net] = [n for n in shipped_models() if n.budget == 4000]
    for name in ("earlier", "this one"):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("settings", {"budget": 4000})
        attrs = {"spec": normalise(net.spec), "params": net.params}
        study.add_trial(create_trial(value=99.3, user_attrs=attrs))
        study.add_trial(create_trial(value=99.35, user_attrs={**attrs, "params": 3000}))
        record = {"trial": 0, "params": net.params, "val_accuracy": 99.3, "epochs": 15,
                  "seeds": [0, 1, 2], "test_accuracy": [99.4, 99.45, 99.42], "seconds": 1.0,
                  "weights": "-", "weights_seed": 0, "target": 99.4}  # fmt: skip
        study.set_user_attr("confirmations", {"0": record})
    [known] = study_nets(storage, exclude="this one")
    assert known.origin == "study 'earlier' trial 0"  # the selected one, not the best val
    assert known.test_mean == pytest.approx(99.4233, abs=1e-3)


def test_asha_waits_for_three_results_and_promotes_the_top_third():
    assert not ranks_in_top(99.0, [])  # alone: waits
    assert not ranks_in_top(99.0, [98.0])
    assert ranks_in_top(99.0, [98.0, 97.0])
    assert not ranks_in_top(98.0, [99.0, 97.0])
    assert ranks_in_top(98.0, [99.0, 97.0, 96.0, 95.0, 94.0])  # 2nd of 6: top third


def rung_trial(value: float, state=TrialState.PRUNED, **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        intermediate_values={1: value},
        params={"x": value},
        distributions={"x": optuna.distributions.FloatDistribution(0, 100)},
        user_attrs={STOPPED_AT_RUNG: 1, **attrs},
    )


def test_a_stopped_trial_is_taken_up_once_when_it_ranks_in_the_top_third():
    study = optuna.create_study(direction="maximize", pruner=RungPromotion())
    study.add_trial(rung_trial(97.0, origin="sampled"))  # arrived first: waited
    study.add_trial(rung_trial(95.0))
    assert take_up_promotion(study) is None  # 2 results: too few to judge
    study.add_trial(rung_trial(96.0))
    taken = take_up_promotion(study, QUEUED_ATTRS)
    assert taken is not None and taken.number == 0
    [queued] = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"x": 97.0}
    assert queued.user_attrs == {"origin": "sampled", RESUMES: 0}
    assert take_up_promotion(study) is None  # already taken up


def test_the_pruner_judges_a_taken_up_trial_without_its_own_copy():
    study = optuna.create_study(direction="maximize", pruner=RungPromotion())
    for value in (97.0, 95.0, 96.0):
        study.add_trial(rung_trial(value))
    trial = study.ask()
    trial.set_user_attr(RESUMES, 0)
    trial.report(97.0, 1)
    assert not trial.should_prune()
    late = study.ask()
    late.report(96.5, 1)  # 2nd of 4: only the first climbs
    assert late.should_prune()


def tiny_config(tmp_path: Path, **settings) -> SearchConfig:
    """1-epoch rungs, then a 3-epoch cap, on 300 images: seconds per trial."""
    defaults = dict(
        budget=8000, epochs=3, storage=f"sqlite:///{tmp_path}/s.db",
        artifacts=str(tmp_path / "artifacts"), data_dir=DATA, train_subset=300, val_size=200,
        epoch_lines=False, device="cpu",
    )  # fmt: skip
    return SearchConfig(**{**defaults, **settings})


@needs_data
def test_a_taken_up_trial_reuses_its_rung_and_trains_only_what_is_left(tmp_path):
    config = tiny_config(tmp_path, trials=10)
    study = create_or_resume(config)
    fit, validation = search_data(DATA, "cpu", 200, 0, 300)
    objective = Objective(config, fit, validation, torch.device("cpu"))
    study.optimize(objective, n_trials=1)
    [first] = study.trials
    assert first.state == TrialState.PRUNED  # alone at its rung: it waits
    for _ in range(2):  # two poorer competitors arrive
        study.add_trial(rung_trial(first.intermediate_values[1] - 1.0))
    assert take_up_promotion(study, QUEUED_ATTRS).number == first.number
    study.optimize(objective, n_trials=1)
    resumed = study.trials[-1]
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs[RESUMES] == 0
    assert resumed.intermediate_values == first.intermediate_values
    assert list(resumed.user_attrs["curves"]) == ["full"]  # the 1-epoch rung was not retrained
    assert resumed.user_attrs["spec"] == first.user_attrs["spec"]


@needs_data
@pytest.mark.parametrize("stop", [True, False])
def test_a_search_stops_at_the_first_confirmed_answer_unless_told_to_use_all_time(tmp_path, stop):
    # Any trained net clears 10%: the first completed trial is the answer.
    config = tiny_config(
        tmp_path, trials=4, target=10.0, pruner="none", confirm_seeds=1, stop_when_answered=stop
    )
    started = time.monotonic()
    study = run_search(config)
    assert time.monotonic() - started < 300
    assert finished_count(study) == (1 if stop else 4)
    assert bool(selected(study)) == stop  # without it, confirming is the caller's step
    assert len(confirmations(study)) == (1 if stop else 0)


@needs_data
def test_a_new_study_with_transfer_trains_the_known_nets_first(tmp_path):
    config = tiny_config(tmp_path, trials=1, budget=6000, transfer=True)
    study = run_search(config)
    [first] = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert first.user_attrs["origin"].startswith("rescaled from shipped model mnist_8000p_15e_995")
    assert list(first.user_attrs["curves"]) == ["full"]  # straight to the epoch cap
    assert study.user_attrs["settings"]["transfer"] is True


@needs_data
def test_a_trial_pauses_before_its_next_rung_while_another_is_likely_to_answer(tmp_path):
    config = tiny_config(tmp_path, trials=5, confirm_seeds=1, stop_when_answered=True)
    study = create_or_resume(config)
    study.pruner = optuna.pruners.NopPruner()  # it would climb: only the pause stops it
    study.add_trial(create_trial(value=99.35))  # within 0.1 points of the 99.4% target
    fit, validation = search_data(DATA, "cpu", 200, 0, 300)
    objective = Objective(config, fit, validation, torch.device("cpu"))
    study.optimize(objective, n_trials=1, catch=(OutOfTime,))
    paused = study.trials[-1]
    assert paused.state == TrialState.FAIL
    assert paused.user_attrs["fail_reason"] == "paused: trial 0 is likely to clear the target"
    assert list(paused.user_attrs["curves"]) == ["1-epoch rung"]  # it stopped between rungs
    _requeue_out_of_time(study, paused.number)  # and runs first when the search goes on
    assert study.trials[-1].state == TrialState.WAITING
    assert study.trials[-1].system_attrs["failed_trial"] == paused.number
