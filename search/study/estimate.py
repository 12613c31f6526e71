"""What a search will cost, said before it trains anything.

A resumed study has measured its own pace: the median seconds per epoch of the
candidates it trained is the figure. A new one has not, so a few training steps of
ref7676 on the search's device give images per second at a known compute (1.14 M MACs
per image), and a typical candidate's epoch is scaled from that by its MACs. The plan
says how many epochs a trial trains on average: under the rungs, each rung is reached
by one trial in ``PROMOTE_ONE_IN`` of those that ran the rung before.
The calibrated figure is rough (time is not only MACs: narrow layers at 28x28 are slower
per MAC, and a dozen steps are noisy: 61 and 141 s per epoch for the same 20k search on
two machines, whose candidates then took a median 52 s), and the progress line replaces
it with the measured pace as soon as trials finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
import torch

from search.engine.data import Split
from search.engine.train import Recipe, train
from search.study.confirm import confirmation_seconds_from
from search.study.plan import PROMOTE_ONE_IN, rungs_for
from search.study.records import measured_epoch_seconds
from space import ZOO, analyse, build

CALIBRATION_STEPS = 12
TYPICAL_CAP_SHARE = 0.65  # a sampled candidate's median MACs, as a share of the cap
PRUNED_SHARE = 0.5  # epochs a one-training-per-trial pruner lets a trial run, on average


@dataclass
class CostEstimate:
    epoch_seconds: float  # of a typical candidate on the whole fit split
    epochs_per_trial: float
    trials: int
    workers: int
    confirm_seconds: float
    source: str = "calibrated"  # how epoch_seconds was found: calibrated, or measured on...

    @property
    def trial_seconds(self) -> float:
        return self.epoch_seconds * self.epochs_per_trial

    @property
    def search_seconds(self) -> float:
        # epoch_seconds is already per worker, with the workers sharing the device.
        return self.trial_seconds * self.trials / self.workers

    def line(self) -> str:
        confirm = (
            f" + about {_duration(self.confirm_seconds)} to confirm" if self.confirm_seconds else ""
        )
        return (
            f"cost estimate: about {_duration(self.search_seconds)} for {self.trials} trials "
            f"({self.epochs_per_trial:.1f} epochs each on average, ~{self.epoch_seconds:.0f} s "
            f"per epoch, {self.source}){confirm}; the ETA below follows the measured pace"
        )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def images_per_second(fit: Split, device: torch.device) -> float:
    """Training throughput of ref7676 over a few steps of the engine on ``device``."""
    batch = Recipe().batch_size
    count = min(len(fit), batch * CALIBRATION_STEPS)
    sample = Split(fit.images[:count], fit.labels[:count])
    tiny = Split(fit.images[:batch], fit.labels[:batch])
    torch.manual_seed(0)
    # A first, untimed pass pays the one-off costs (allocator, kernel selection) that
    # would otherwise double a figure taken over a dozen steps.
    train(build(ZOO["ref7676"]), tiny, tiny, Recipe(epochs=1), device=device)
    model = build(ZOO["ref7676"])
    started = time.perf_counter()
    train(model, sample, tiny, Recipe(epochs=1), device=device)
    return count / (time.perf_counter() - started)


def estimate_cost(
    *,
    fit: Split,
    device: torch.device,
    epochs: int,
    trials: int,
    pruner: str,
    mac_cap: int,
    workers: int = 1,
    confirm_seeds: int = 0,
    train_subset: int | None = None,
    study: optuna.Study | None = None,
) -> CostEstimate:
    """The estimate for a search of ``trials`` more trials on ``fit`` (see the module
    doc): from ``study``'s measured pace when it has trained a few candidates, else from
    a calibration on ``device``."""
    measured = measured_epoch_seconds(study) if study is not None else None
    if measured:
        epoch_seconds, candidates = measured
        source = f"measured on {candidates} candidates of this study"
    else:
        rate = images_per_second(fit, device)
        reference_macs = analyse(ZOO["ref7676"]).macs
        # Workers share the device that the calibration had to itself: each trains at
        # about 1 / workers of the rate (side by side they gain 1.04-1.24x on a CPU).
        share = TYPICAL_CAP_SHARE * mac_cap / reference_macs
        epoch_seconds = len(fit) / rate * share * workers
        source = "calibrated"
    if pruner == "rungs":
        rungs = rungs_for(epochs, len(fit))
        epochs_per_trial = sum(
            rung.epochs * (rung.images or len(fit)) / len(fit) / PROMOTE_ONE_IN**k
            for k, rung in enumerate(rungs)
        )
    elif pruner == "none":
        epochs_per_trial = float(epochs)
    else:
        epochs_per_trial = epochs * PRUNED_SHARE
    confirm_seconds = confirmation_seconds_from(
        epochs * epoch_seconds, len(fit), confirm_seeds, train_subset, workers
    )
    return CostEstimate(epoch_seconds, epochs_per_trial, trials, workers, confirm_seconds, source)
