"""Replay the promotion rules on the rung results of committed studies.

A rung's results do not depend on which rule promoted from it, so the order in which a
study's trials reported their first rung replays each rule exactly: Optuna's
successive halving (the top ``max(1, n // 3)`` of the results so far, judged once, on
arrival) against ASHA as ``search.study.promotion`` runs it (the top ``n // 3`` once
there are three, stopped trials taken up again when they rank there later). Judged
against the study's final ranking of that rung: which promotions went to its top third.

    python -m search.bench.promotion results/search_3000.db results/search_4000.db ...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.study.plan import PROMOTE_ONE_IN
from search.study.promotion import ranks_in_top

FIRST_TRIALS = 5  # "early" promotions: among a study's first five results


@dataclass(frozen=True)
class Replay:
    """One rule on one study's first rung: how many it promoted and how well."""

    study: str
    rule: str
    results: int  # trials that reported the rung
    promoted: int
    in_top_third: int  # promoted trials in the final top third of the rung
    top_third: int  # size of that top third
    early: int  # promotions among the first FIRST_TRIALS results


def first_rung(study: optuna.Study) -> list[float]:
    """The first rung's results, in the order the trials reported them (trial number)."""
    values = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if 1 in trial.intermediate_values and "resumes" not in trial.user_attrs:
            values.append(trial.intermediate_values[1])
    return values


def halving_so_far(values: list[float]) -> set[int]:
    """Optuna's SuccessiveHalvingPruner: promoted on arrival if in the top max(1, n // 3)
    of the results so far, itself included."""
    promoted = set()
    for index, value in enumerate(values):
        count = index + 1
        better = sum(other > value for other in values[:index])
        if better < max(1, count // PROMOTE_ONE_IN):
            promoted.add(index)
    return promoted


def asha(values: list[float]) -> set[int]:
    """ASHA as the search runs it: after each arrival, every result not yet promoted that
    ranks in the top third of those so far (three at least) climbs."""
    promoted: set[int] = set()
    for count in range(1, len(values) + 1):
        seen = values[:count]
        for index, value in enumerate(seen):
            others = seen[:index] + seen[index + 1 :]
            if index not in promoted and ranks_in_top(value, others):
                promoted.add(index)
    return promoted


def replay(study: optuna.Study) -> list[Replay]:
    """Both rules on ``study``'s first rung."""
    values = first_rung(study)
    ranked = sorted(range(len(values)), key=lambda i: -values[i])
    top = set(ranked[: max(1, len(values) // PROMOTE_ONE_IN)])
    rows = []
    for rule, promote in (("halving so far", halving_so_far), ("ASHA", asha)):
        promoted = promote(values)
        rows.append(
            Replay(
                study=study.study_name,
                rule=rule,
                results=len(values),
                promoted=len(promoted),
                in_top_third=len(promoted & top),
                top_third=len(top),
                early=len({i for i in promoted if i < FIRST_TRIALS}),
            )
        )
    return rows


def main(paths: list[str]) -> None:
    print(
        "storage | study | rule | rung results | promoted | of them in the final top third | early promotions"
    )
    print("---|---|---|---:|---:|---:|---:")
    for path in paths:
        url = f"sqlite:///{path}"
        for name in optuna.get_all_study_names(url):
            study = optuna.load_study(study_name=name, storage=url)
            if study.user_attrs.get("settings", {}).get("pruner", "rungs") != "rungs":
                continue  # its first step is an epoch of one training, not a rung
            for row in replay(study):
                if row.results < PROMOTE_ONE_IN:
                    continue
                print(
                    f"{path} | {row.study} | {row.rule} | {row.results} | {row.promoted} | "
                    f"{row.in_top_third} of {row.promoted} (top third: {row.top_third}) | {row.early}"
                )


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main(sys.argv[1:])
