"""The search plan: the rungs a candidate climbs before it earns a full training.

Each rung is a training of its own, from a fresh init, with a complete OneCycle over
its epochs: a 1-epoch run whose learning rate has annealed ranks candidates far better
than epoch 1 of a 15-epoch run, which mostly says where the learning rate is. A rung
reports its validation accuracy as step ``3**k`` of the trial, and the best third of
each rung is promoted to the next (``search.study.promotion``). The last rung is the
full epoch cap on the whole fit split and gives the trial its value.

One screening rung, 1 epoch on all fit images. The fidelity study ranked a 3-epoch run
better (rho 0.83 against 0.70, docs/evidence.md) and searches first screened with both,
1 then 3 epochs; but then the first full training of a search from scratch waited for
nine screens and three 3-epoch runs, and every candidate trained to the cap paid 4
epochs before its 15. In the 30-minute benchmark at 8k/15 on one core that search's
first full training finished at minutes 9.8-15.3, against 3.3-4.9 for plain Optuna's,
and two random candidates trained in full were often as good as what the screens found.
With one rung, a full training starts after three screens and each costs 3 + 15 epochs
instead of 9 + 9 + 15. A study records its plan (``SCREENING_KEY``): a study created
under the two-rung plan resumes with it, so that its trials stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

PROMOTE_ONE_IN = 3  # successive halving's reduction factor
# (epochs, fit images or None for all) of each rung below the full cap.
Screening = tuple[tuple[int, int | None], ...]
SCREENING_RUNGS: Screening = ((1, None),)
# The plan of the studies created before it was recorded: 1 epoch, then 3.
EARLIER_SCREENING_RUNGS: Screening = ((1, None), (3, None))
SCREENING_KEY = "screening_rungs"  # study user attribute: [[epochs, images or None], ...]


@dataclass(frozen=True)
class Rung:
    """One training in a trial's climb: ``epochs`` over the first ``images`` fit images."""

    epochs: int
    images: int | None  # None: the whole fit split
    step: int  # the resource this rung reports as, for the pruner

    @property
    def name(self) -> str:
        where = "" if self.images is None else f" on {self.images:,} images"
        return f"{self.epochs}-epoch rung{where}"


def rungs_for(
    epochs: int,
    fit_size: int,
    screening: Screening = SCREENING_RUNGS,
) -> list[Rung]:
    """The rungs of a trial under an ``epochs`` cap: the ``screening`` rungs that are
    shorter than the cap (and fit the split), then the cap itself."""
    rungs = []
    for epochs_, images in screening:
        cost = epochs_ * (images or fit_size) / fit_size
        if cost < epochs and (images is None or images < fit_size):
            rungs.append(Rung(epochs_, images, PROMOTE_ONE_IN ** len(rungs)))
    return [*rungs, Rung(epochs, None, PROMOTE_ONE_IN ** len(rungs))]


def study_screening(study: optuna.Study) -> Screening:
    """The screening rungs ``study`` runs: those it recorded when it was created, or the
    earlier two-rung plan for a study from before plans were recorded."""
    recorded = study.user_attrs.get(SCREENING_KEY)
    if recorded is None:
        return EARLIER_SCREENING_RUNGS
    return tuple((epochs, images) for epochs, images in recorded)
