"""The search plan: the rungs a candidate climbs before it earns a full training.

Each rung is a training of its own, from a fresh init, with a complete OneCycle over
its epochs: a 1-epoch run whose learning rate has annealed ranks candidates far better
than epoch 1 of a 15-epoch run, which mostly says where the learning rate is. A rung
reports its validation accuracy as step ``3**k`` of the trial, the resource Optuna's
SuccessiveHalvingPruner (min_resource 1, reduction factor 3) expects, so the pruner
promotes the best third of each rung to the next. The last rung is the full epoch cap
on the whole fit split and gives the trial its value.

Which rungs rank best per second was measured, not chosen by taste: see
``search.bench.fidelity`` and the README's fidelity table.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMOTE_ONE_IN = 3  # successive halving's reduction factor
# (epochs, fit images or None for all) of the rungs below the full cap.
SCREENING_RUNGS = ((1, None), (3, None))


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


def rungs_for(epochs: int, fit_size: int) -> list[Rung]:
    """The rungs of a trial under an ``epochs`` cap: the screening rungs that are shorter
    than the cap (and fit the split), then the cap itself."""
    rungs = []
    for epochs_, images in SCREENING_RUNGS:
        cost = epochs_ * (images or fit_size) / fit_size
        if cost < epochs and (images is None or images < fit_size):
            rungs.append(Rung(epochs_, images, PROMOTE_ONE_IN ** len(rungs)))
    return [*rungs, Rung(epochs, None, PROMOTE_ONE_IN ** len(rungs))]
