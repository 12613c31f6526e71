"""What a trial measured, read back: the seconds per epoch of the candidates a study
trained, from the curves the objective records (``curves`` per training, ``curve`` for
the full one). The cost estimate of a resumed search, the time a confirmation needs and
the epoch-cost table read them the same way."""

from __future__ import annotations

import statistics
from datetime import datetime

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
    study: optuna.Study,
    step: str | None = None,
    started: datetime | None = None,
    *,
    before: bool = False,
) -> list[tuple[dict, float]]:
    """Each distinct trained candidate of the study once (a retry is the same network),
    with its median seconds per epoch on the whole fit split over all its trainings;
    with ``step``, only the trials that training step ran (user attribute ``step``;
    trials from before it was recorded ran the plain step); with ``started``, only the
    trials started from then on (``before``: only those started before then)."""
    candidates: dict[str, tuple[dict, float]] = {}
    for trial in study.get_trials(deepcopy=False, states=FINISHED):
        if step is not None and trial.user_attrs.get("step", "plain") != step:
            continue
        if started is not None and (trial.datetime_start < started) != before:
            continue
        spec = trial.user_attrs.get("spec")
        epochs = full_split_epoch_seconds(trial)
        if spec is not None and epochs:
            candidates.setdefault(str(spec), (spec, statistics.median(epochs)))
    return list(candidates.values())


def measured_epoch_seconds(
    study: optuna.Study,
    minimum: int = 3,
    started: datetime | None = None,
    *,
    before: bool = False,
) -> tuple[float, int] | None:
    """The median seconds per epoch of the study's trained candidates and how many there
    were; None below ``minimum`` candidates. Workers that shared the machine are in the
    figure, as they will be on resume. Only trials of the engine's current step count:
    an older step's pace would overstate what the rest of the search costs. ``started``
    and ``before`` keep the trials of one run, or of the runs before it, as for
    ``candidate_epoch_seconds``."""
    seconds = [
        per_epoch for _, per_epoch in candidate_epoch_seconds(study, STEP, started, before=before)
    ]
    if len(seconds) < minimum:
        return None
    return statistics.median(seconds), len(seconds)


def pace_since(
    study: optuna.Study, trial: FrozenTrial, started: datetime | None, minimum: int = 3
) -> float:
    """How many times as long an epoch takes in the run that began at ``started`` as it
    took when ``trial`` trained in an earlier run: the ratio of the two medians over the
    candidates each trained, rough as the candidates differ. 1.0 for a trial of this run,
    without ``started`` (no run: ``budgetnas confirm``), or while either side has measured
    fewer than ``minimum`` candidates. What confirming a trial costs is sized from its own
    training, and a study resumed on a slower machine, or with more workers sharing it,
    would otherwise confirm past --timeout (2.7x slower for the 20k search resumed on an AVX2
    CPU after an AVX-512 one)."""
    if started is None or trial.datetime_start >= started:
        return 1.0
    now = measured_epoch_seconds(study, minimum, started)
    then = measured_epoch_seconds(study, minimum, started, before=True)
    if now is None or then is None:
        return 1.0
    return now[0] / then[0]
