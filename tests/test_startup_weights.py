"""The check behind TPE's uniform start-up: choice weights from earlier studies, and how
well they rank a held-out study's candidates (search/bench/startup.py)."""

import optuna
from optuna.trial import create_trial

from search.bench.startup import choice_weights, discrete_choices, held_out, sampled_to_the_cap

KINDS = optuna.distributions.CategoricalDistribution(["plain", "separable"])


def finished_study(storage, name: str, families: list[str]) -> optuna.Study:
    """A finished search whose candidates, best first, had these families."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("settings", {"budget": 4000, "pruner": "rungs"})
    for rank, family in enumerate(families):
        value = 99.5 - rank / 10
        study.add_trial(
            create_trial(
                value=value,
                params={"family": family},
                distributions={"family": KINDS},
                intermediate_values={1: value - 2},
            )
        )
    study.enqueue_trial({}, user_attrs={"given_spec": {}})  # queued: no choices, no evidence
    return study


def test_each_choice_weighs_by_how_often_it_was_in_its_study_best_third():
    storage = optuna.storages.InMemoryStorage()
    study = finished_study(storage, "earlier", ["separable", "separable"] + ["plain"] * 4)
    assert len(sampled_to_the_cap(study)) == 6  # the queued trial is not a candidate
    weights = choice_weights([study], discrete_choices(8000))
    assert weights["family"] == {"separable": 3 / 4, "plain": 1 / 6}  # the best third: 2 of 6
    assert set(weights["head"].values()) == {1 / 2}  # never recorded: no evidence either way
    assert choice_weights([], discrete_choices(8000)) == {}


def test_weights_from_other_storages_rank_a_held_out_study(tmp_path):
    families = ["separable", "separable"] + ["plain"] * 4
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")]
    finished_study(urls[0], "a", families)
    finished_study(urls[1], "b", families[::-1])  # the other way round: plain led here
    rows = {row.study: row for row in held_out(urls)}
    # Each study is ranked by the other's weights, which point the wrong way for it.
    assert rows["a"].full == rows["a"].screened == 6
    assert rows["a"].rho_full < 0 and rows["a"].rho_first_rung < 0
    assert rows["b"].rho_full < 0
