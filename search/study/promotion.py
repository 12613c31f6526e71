"""Promotion: which trials climb from one rung of the plan to the next.

Optuna's SuccessiveHalvingPruner promotes a trial that ranks in the top third of the
trials that reached its rung *so far*, itself included: the first trial at a rung always
climbs, whatever it is, and a trial is judged once, against whoever came before it. In a
benchmark run the rungs cut trial 1 at 97.41% because trial 0 had 97.78%; the same
candidate reached 99.39% in the other arm.

The rule here is ASHA's (Li et al., 2020): a trial climbs when its rung holds at least
``PROMOTE_ONE_IN`` results and it ranks in their top third (``len // PROMOTE_ONE_IN``).
A trial that does not climb on arrival stops but is not judged for good: whenever a rung
has grown and a stopped trial ranks in its top third, the worker's next trial takes it
up again (``take_up_promotion``) from the next rung, reusing the results it had. So the
first trials wait for competitors instead of climbing by default, and the rule is the
same whatever the order in which candidates arrive.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.plan import PROMOTE_ONE_IN

RESUMES = "resumes"  # user attribute of a taken-up trial: the number of the one it continues
STOPPED_AT_RUNG = "stopped_at_rung"  # user attribute of a trial stopped at a rung: its step


def rung_values(study: optuna.Study, step: int) -> dict[int, float]:
    """{trial number: accuracy} at the rung reported as ``step``, one entry per candidate:
    a taken-up trial's copy of its earlier results counts under the original's number."""
    values = {}
    # A failed trial's candidate is queued again and trains afresh: count the retry only.
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for trial in study.get_trials(deepcopy=False, states=states):
        if step in trial.intermediate_values and RESUMES not in trial.user_attrs:
            values[trial.number] = trial.intermediate_values[step]
    return values


def ranks_in_top(value: float, others: list[float]) -> bool:
    """Whether ``value`` ranks in the top third of itself and ``others``, once they are at
    least PROMOTE_ONE_IN (ties go the trial's way)."""
    count = len(others) + 1
    better = sum(other > value for other in others)
    return count >= PROMOTE_ONE_IN and better < count // PROMOTE_ONE_IN


def climbs(study: optuna.Study, number: int, step: int, value: float) -> bool:
    """Whether candidate ``number``'s ``value`` at rung ``step`` ranks in the rung's top
    third now, against every other candidate's result there."""
    values = rung_values(study, step)
    values.pop(number, None)
    return ranks_in_top(value, list(values.values()))


class RungPromotion(optuna.pruners.BasePruner):
    """Stops a trial at a rung unless it ranks in the rung's top third (see the module)."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        number = trial.user_attrs.get(RESUMES, trial.number)
        return not climbs(study, number, step, trial.intermediate_values[step])


def take_up_promotion(study: optuna.Study, carried: tuple[str, ...] = ()) -> FrozenTrial | None:
    """Queue the best stopped trial that now ranks in its rung's top third, to continue
    from the next rung; returns it, or None when there is none.

    The queued trial has the same sampled parameters (so the same architecture), the
    stopped trial's ``carried`` user attributes, and ``RESUMES`` set to its number. A
    trial is taken up once: a second worker looking at the same moment sees it queued.
    """
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs[RESUMES] for t in trials if RESUMES in t.user_attrs}
    stopped = [
        t
        for t in trials
        if t.state == TrialState.PRUNED
        and t.intermediate_values
        and t.number not in taken
        and RESUMES not in t.user_attrs
        and STOPPED_AT_RUNG in t.user_attrs
    ]
    stopped.sort(key=lambda t: -t.intermediate_values[t.last_step])
    for trial in stopped:
        step = trial.last_step
        if climbs(study, trial.number, step, trial.intermediate_values[step]):
            attrs = {key: trial.user_attrs[key] for key in carried if key in trial.user_attrs}
            study.enqueue_trial(trial.params, user_attrs={**attrs, RESUMES: trial.number})
            return trial
    return None
