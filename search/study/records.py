"""What a trial measured, read back: the seconds per epoch of the candidates a study
trained, from the curves the objective records (``curves`` per training, ``curve`` for
the full one). The cost estimate of a resumed search and the epoch-cost table read them
the same way."""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial

from search.engine.train import STEP
from search.study.config import FINISHED


def full_split_epoch_seconds(trial: FrozenTrial) -> list[float]:
    """The measured seconds of each epoch the trial trained on the whole fit split, over
    all its trainings (rungs and full cap); epochs on a subset of the split are left out."""
    return [
        epoch["seconds"]
        for name, curve in (trial.user_attrs.get("curves") or {}).items()
        if "images" not in name  # a rung on a subset of the fit split
        for epoch in curve
    ] or [epoch["seconds"] for epoch in trial.user_attrs.get("curve", [])]


def candidate_epoch_seconds(
    study: optuna.Study, step: str | None = None
) -> list[tuple[dict, float]]:
    """Each distinct trained candidate of the study once (a retry is the same network),
    with its median seconds per epoch on the whole fit split over all its trainings;
    with ``step``, only the trials that training step ran (user attribute ``step``;
    trials from before it was recorded ran the plain step)."""
    candidates: dict[str, tuple[dict, float]] = {}
    for trial in study.get_trials(deepcopy=False, states=FINISHED):
        if step is not None and trial.user_attrs.get("step", "plain") != step:
            continue
        spec = trial.user_attrs.get("spec")
        epochs = full_split_epoch_seconds(trial)
        if spec is not None and epochs:
            candidates.setdefault(str(spec), (spec, statistics.median(epochs)))
    return list(candidates.values())


def measured_epoch_seconds(study: optuna.Study, minimum: int = 3) -> tuple[float, int] | None:
    """The median seconds per epoch of the study's trained candidates and how many there
    were; None below ``minimum`` candidates. Workers that shared the machine are in the
    figure, as they will be on resume. Only trials of the engine's current step count:
    an older step's pace would overstate what the rest of the search costs."""
    seconds = [per_epoch for _, per_epoch in candidate_epoch_seconds(study, STEP)]
    if len(seconds) < minimum:
        return None
    return statistics.median(seconds), len(seconds)
