"""Read results back out of a storage: the tables of studies, trials and choices that
``budgetnas studies``, ``show`` and ``choices`` print."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UsageError
from search.study.config import CAP_CONSTRAINTS, FINISHED
from search.study.confirm import Confirmation, confirmations, selected
from search.study.records import candidate_epoch_seconds
from space import analyse


def studies_table(storage: optuna.storages.BaseStorage) -> list[dict]:
    """One row per study: its settings, trial counts and best validation accuracy."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        settings = study.user_attrs.get("settings", {})
        rows.append(
            {
                "study": summary.study_name,
                "budget": settings.get("budget"),
                "epochs": settings.get("epochs"),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "best_val": max(values) if values else None,
                "selected": len(selected(study)),
                "confirmed": len(confirmations(study)),
            }
        )
    return rows


def choices_table(studies: Iterable[optuna.Study], target: float = 99.4) -> list[dict]:
    """Which choices of the space win: one row per value of each discrete choice the
    sampler made (family, stages, depths, head...), over the studies' trained candidates.

    A candidate is counted once however often it trained (a retry, or both arms of the
    search benchmark drawing it from the same seed). ``screened``: candidates that
    trained at all; ``first_rung``: their median validation accuracy after the 1-epoch
    rung (searches with the rungs pruner only: epoch 1 of a 15-epoch run is not the same
    measure); ``full``: candidates trained to the cap, with their mean and best
    validation accuracy and how many reached ``target``.
    """
    seen: set[str] = set()
    screened: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], list[float]] = {}
    full: dict[tuple[str, str], list[float]] = {}
    for study in studies:
        rungs = study.user_attrs.get("settings", {}).get("pruner") == "rungs"
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            spec = trial.user_attrs.get("spec")
            if spec is None or not trial.intermediate_values or str(spec) in seen:
                continue  # untrained (over a limit), or a candidate counted already
            seen.add(str(spec))
            for name, distribution in trial.distributions.items():
                if isinstance(distribution, optuna.distributions.FloatDistribution):
                    continue  # continuous: not a choice between kinds of network
                choice = (name, str(trial.params[name]))
                screened[choice] = screened.get(choice, 0) + 1
                if rungs:
                    first.setdefault(choice, []).append(trial.intermediate_values[1])
                if trial.state == TrialState.COMPLETE:
                    full.setdefault(choice, []).append(trial.value)
    rows = []
    for choice in sorted(screened):
        firsts, fulls = first.get(choice, []), full.get(choice, [])
        rows.append(
            {
                "choice": "=".join(choice),
                "screened": screened[choice],
                "first_rung": statistics.median(firsts) if firsts else None,
                "full": len(fulls),
                "mean_val": statistics.fmean(fulls) if fulls else None,
                "best_val": max(fulls, default=None),
                "reached": sum(value >= target for value in fulls),
            }
        )
    return rows


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank)."""

    def ranks(values: list[float]) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        order = values.argsort()
        result = np.empty(len(values))
        result[order] = np.arange(len(values))
        for value in np.unique(values):  # average the ranks of ties
            tied = values == value
            result[tied] = result[tied].mean()
        return result

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def epoch_cost_table(studies: dict[str, optuna.Study], minimum: int = 5) -> list[dict]:
    """What predicts a candidate's time per epoch: per study (``studies`` maps a label to
    each; a study's workers share the machine alike), Spearman's rho of the measured
    seconds per epoch with the MACs and with the activations per image, over its
    distinct trained candidates (at least ``minimum``). Seconds are the median epoch on
    the whole fit split, over every training of the trial, so pruned candidates count
    too."""
    rows = []
    for label, study in studies.items():
        candidates = candidate_epoch_seconds(study)
        if len(candidates) < minimum:
            continue
        seconds = [per_epoch for _, per_epoch in candidates]
        analyses = [analyse(spec) for spec, _ in candidates]
        macs = [analysis.macs for analysis in analyses]
        activations = [analysis.activations for analysis in analyses]
        rows.append(
            {
                "study": label,
                "candidates": len(candidates),
                "seconds": f"{min(seconds):.0f}-{max(seconds):.0f}",
                "macs_rho": spearman(macs, seconds),
                "activations_rho": spearman(activations, seconds),
            }
        )
    return rows


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome. Pruned ones are split by how far they got: untrained (over the
    budget or the compute cap: "too big" and "losing" are different stories), then by
    the rung they were stopped at (or the epoch, with a one-training-per-trial pruner)."""
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    rungs = study.user_attrs.get("settings", {}).get("pruner") == "rungs"
    counts = {
        "trials": len(trials),
        "complete": sum(1 for t in trials if t.state == TrialState.COMPLETE),
        "over budget or cap": sum(1 for t in pruned if _untrained(t)),
    }
    for trial in pruned:
        if not _untrained(trial):
            reached = len(trial.intermediate_values)
            key = f"pruned at rung {reached}" if rungs else "pruned during training"
            counts[key] = counts.get(key, 0) + 1
    counts["failed"] = sum(1 for t in trials if t.state == TrialState.FAIL)
    counts["running"] = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return counts


def activations(trial: FrozenTrial) -> int | None:
    """The trial's activations per image; trials stored before they were recorded get
    them from their spec."""
    if "activations" in trial.user_attrs:
        return trial.user_attrs["activations"]
    spec = trial.user_attrs.get("spec")
    return analyse(spec).activations if spec is not None else None


def over_budget(trial: FrozenTrial) -> bool:
    """Pruned untrained for parameters over the budget (the constraint it handed TPE)."""
    return trial.constraints.get("params_over_budget", 0.0) > 0


def over_cap(trial: FrozenTrial) -> bool:
    """Pruned untrained for MACs or activations over their caps."""
    return any(trial.constraints.get(key, 0.0) > 0 for key in CAP_CONSTRAINTS)


def _untrained(trial: FrozenTrial) -> bool:
    return over_budget(trial) or over_cap(trial)


def trials_table(study: optuna.Study, limit: int = 10) -> list[dict]:
    """The top trials: completed ones by validation accuracy, then the rest by progress."""
    confirmed = confirmations(study)
    trials = study.get_trials(deepcopy=False)

    def rank(trial: FrozenTrial) -> tuple:
        if trial.state == TrialState.COMPLETE:
            return (0, -trial.value, trial.number)
        last = (
            trial.intermediate_values[max(trial.intermediate_values)]
            if trial.intermediate_values
            else 0.0
        )
        return (1, -len(trial.intermediate_values), -last, trial.number)

    rows = []
    for trial in sorted(trials, key=rank)[:limit]:
        confirmation = confirmed.get(trial.number)
        rows.append(
            {
                "trial": trial.number,
                "params": trial.user_attrs.get("params"),
                "macs": trial.user_attrs.get("macs"),
                "activations": activations(trial),
                "epoch_seconds": trial.user_attrs.get("epoch_seconds"),
                "val": trial.value,
                "test_mean": confirmation.mean if confirmation else None,
                "test_min": confirmation.min if confirmation else None,
                "reached": reached(trial),
                "state": trial.state.name,
                "selected": bool(confirmation and confirmation.selected),
                "origin": trial_origin(trial),
            }
        )
    return rows


def trial_origin(trial: FrozenTrial) -> str:
    """Where the trial's candidate came from: "sampled", a known net that transfer queued
    (``search.study.transfer``), or a --warm-start reference net."""
    if "origin" in trial.user_attrs:
        return trial.user_attrs["origin"]
    zoo = trial.user_attrs.get("zoo")
    return f"reference net {zoo} (warm start)" if zoo else "sampled"


def reached(trial: FrozenTrial) -> str:
    """How far a trial trained: the full cap, the last rung it ran, or its last epoch."""
    if trial.state == TrialState.COMPLETE:
        return f"{len(trial.user_attrs.get('curve', []))} epochs"
    rungs = [label for label in trial.user_attrs.get("curves", {}) if label != "full"]
    if rungs and "curve" not in trial.user_attrs:
        return rungs[-1]
    curve = trial.user_attrs.get("curve", [])
    return f"epoch {len(curve)}" if curve else "-"


def find_trial(study: optuna.Study, number: int | None) -> tuple[FrozenTrial, Confirmation | None]:
    """The trial to export: ``number``, or the study's winner (the first selected one)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(
            f"study {study.study_name!r} has no completed trial yet; "
            "run 'budgetnas search' (or wait for a trial to finish) and try again"
        )
    if number is None:
        winners = selected(study)
        if not winners:
            confirmed = confirmations(study)
            if confirmed:
                best = max(confirmed.values(), key=lambda c: c.mean)
                raise UsageError(
                    f"none of the {len(confirmed)} confirmed trial(s) of study "
                    f"{study.study_name!r} cleared its target (best: trial {best.trial}, "
                    f"mean test {best.mean:.2f}%); run more trials (the same search command), "
                    "search with more --epochs, or pass --trial N to export one anyway"
                )
            raise UsageError(
                f"no architecture in study {study.study_name!r} has cleared its target yet; "
                "run 'budgetnas confirm' or pass --trial N to export one anyway"
            )
        number = winners[0].trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(
            f"study {study.study_name!r} has no trial {number}; "
            f"'budgetnas show {study.study_name}' lists its trials"
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE or "weights" not in trial.user_attrs:
        raise UsageError(
            f"trial {number} did not complete ({trial.state.name}); export a completed trial "
            f"('budgetnas show {study.study_name}' lists them)"
        )
    return trial, confirmations(study).get(number)
