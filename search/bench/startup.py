"""Would TPE's random start-up do better drawn by the choices that ranked well in earlier
studies? The check that kept such weighted draws out of the search.

TPE draws its first ten trials uniformly before it models anything. A value's weight
here is how often candidates with it finished in the best third of their study among
those trained to the cap, smoothed (one more good and one more poor candidate each), as
such draws would weigh it. Each study of the storages given is held out in turn: the
weights come from the studies of the other storages (the arms of one benchmark run share
a storage and a seed), and each of the held-out study's sampled candidates gets the
log-probability that the weighted draw gives its choices. Spearman's rho of that against
the candidate's validation accuracy, at the 1-epoch rung (studies with the rungs pruner:
every screened candidate) and at the epoch cap, says whether the weights point where the
held-out study's good nets were. Reading only: nothing is trained.

    python -m search.bench.startup sqlite:///results/search_8000.db ...
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.results.tables import spearman
from search.study.sampler import sample_architecture
from search.study.storage import open_storage
from search.study.transfer import earlier_studies

MIN_RANKED = 4  # candidates below which a rank correlation says nothing
ANY_BUDGET = 8000  # the space's choices do not depend on the budget
BEST_SHARE = 1 / 3  # of a study's trials trained to the cap: where its good nets live


@dataclass(frozen=True)
class HeldOut:
    """One held-out study: how well the others' weights rank its candidates (None: too few)."""

    storage: str
    study: str
    screened: int
    rho_first_rung: float | None
    full: int
    rho_full: float | None


def discrete_choices(budget: int) -> dict[str, list]:
    """The space's discrete choices (family, stages, depths, head...) and their values, read
    off the distributions of one sampled trial, so that they follow the sampler."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sample_architecture(trial, budget)
    choices = {}
    for name, distribution in trial.distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            choices[name] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution):
            choices[name] = list(range(distribution.low, distribution.high + 1, distribution.step))
    return choices


def sampled_to_the_cap(study: optuna.Study) -> list[FrozenTrial]:
    """The study's sampled candidates trained to the cap (queued ones have no choices), best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((trial for trial in complete if trial.params), key=lambda trial: -trial.value)


def choice_weights(
    studies: list[optuna.Study], choices: dict[str, list]
) -> dict[str, dict[Any, float]]:
    """How often each value of each choice was in the best third of its study, among the
    candidates with that value trained to the cap, counting one more good and one more poor
    candidate for every value: an untried value weighs 1/2, one always among the best
    tends to 1. Empty when no study trained a sampled candidate to the cap.

    Ranks within a study, not accuracies, are compared: studies at other budgets and epoch
    caps reach other accuracies, but which choices lead them is what would carry over."""
    good: Counter = Counter()
    trained: Counter = Counter()
    for study in studies:
        complete = sampled_to_the_cap(study)
        best = math.ceil(len(complete) * BEST_SHARE)
        for rank, trial in enumerate(complete):
            for name, value in trial.params.items():
                if value in choices.get(name, ()):
                    trained[name, value] += 1
                    good[name, value] += rank < best
    if not trained:
        return {}
    return {
        name: {value: (good[name, value] + 1) / (trained[name, value] + 2) for value in values}
        for name, values in choices.items()
    }


def draw_log_probability(weights: dict[str, dict], params: dict) -> float:
    """Log-probability that the weighted start-up draw picks these choices."""
    return sum(
        math.log(odds[params[name]] / sum(odds.values()))
        for name, odds in weights.items()
        if params.get(name) in odds
    )


def rank_correlation(
    weights: dict[str, dict], trials: list[FrozenTrial], accuracies: list[float]
) -> float | None:
    """Spearman's rho of the trials' draw log-probabilities against their accuracies."""
    if len(trials) < MIN_RANKED or not weights:
        return None
    return spearman([draw_log_probability(weights, trial.params) for trial in trials], accuracies)


def held_out(urls: list[str]) -> list[HeldOut]:
    """Each study of ``urls`` ranked by the weights of the studies in the other storages:
    the arms of one benchmark run share a storage and a seed, and so their first draws."""
    studies = [
        (url, study) for url in urls for study in earlier_studies(open_storage(url), exclude="")
    ]
    choices = discrete_choices(ANY_BUDGET)
    weights_without = {  # one set of weights per held-out storage, shared by its studies
        url: choice_weights([other for other_url, other in studies if other_url != url], choices)
        for url in urls
    }
    rows = []
    for url, study in studies:
        weights = weights_without[url]
        full = sampled_to_the_cap(study)
        rungs = study.user_attrs["settings"].get("pruner") == "rungs"
        screened = [
            trial
            for trial in study.get_trials(deepcopy=False)
            if rungs
            and trial.params
            and 1 in trial.intermediate_values
            and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ]

        rows.append(
            HeldOut(
                url,
                study.study_name,
                len(screened),
                rank_correlation(weights, screened, [t.intermediate_values[1] for t in screened]),
                len(full),
                rank_correlation(weights, full, [trial.value for trial in full]),
            )
        )
    return rows


def print_held_out(rows: list[HeldOut]) -> None:
    print(
        "storage | study | screened | rho at the 1-epoch rung | trained to the cap | rho at the cap"
    )
    print("---|---|---:|---:|---:|---:")
    for row in rows:
        first = "-" if row.rho_first_rung is None else f"{row.rho_first_rung:+.2f}"
        full = "-" if row.rho_full is None else f"{row.rho_full:+.2f}"
        print(f"{row.storage} | {row.study} | {row.screened} | {first} | {row.full} | {full}")
    for label, values in (
        ("1-epoch rung", [r.rho_first_rung for r in rows if r.rho_first_rung is not None]),
        ("epoch cap", [r.rho_full for r in rows if r.rho_full is not None]),
    ):
        if values:
            print(
                f"\n{label}: rho over {len(values)} held-out studies, median "
                f"{statistics.median(values):+.2f} ({min(values):+.2f} to {max(values):+.2f}),"
                f" positive in {sum(v > 0 for v in values)}"
            )


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print_held_out(held_out(sys.argv[1:]))
