"""What a search will cost, printed before anything trains.

A resumed study has measured its own pace: the median seconds per epoch of the
candidates it trained is the figure. A new one has not, so it times a dozen training
steps of a typical candidate on the search's device, at the threads a worker gets: the
draw of median MACs among candidates drawn at random from the space at this budget and
caps. Timing the candidate itself, not a reference net scaled by MACs, keeps what MACs
miss (narrow layers at 28x28 cost more per MAC), and drawing it from the space keeps
what the caps miss (at 3k the median draw uses a quarter of the MACs cap). The plan says
how many epochs a trial trains on average: under the rungs, each rung is reached by one
trial in ``PROMOTE_ONE_IN`` of those that ran the rung before. The figure is rough (the
sampler soon favours other candidates than random ones, and workers side by side slow
each other), and the progress line replaces it with the measured pace as soon as trials
finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
import torch

from search.engine.data import Split
from search.engine.train import Recipe, torch_threads, train
from search.study.confirm import confirmation_seconds_from
from search.study.plan import PROMOTE_ONE_IN, SCREENING_RUNGS, rungs_for, study_screening
from search.study.records import measured_epoch_seconds
from search.study.sampler import sample_architecture
from space import Spec, analyse, build

CALIBRATION_STEPS = 12
TYPICAL_DRAWS = 40  # candidates drawn to find a typical one's MACs: a few ms each
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


def images_per_second(
    fit: Split, device: torch.device, spec: Spec, threads: int | None = None
) -> float:
    """Training throughput of ``spec`` over a few steps of the engine on ``device``, on
    ``threads`` CPU threads (default: as set)."""
    batch = Recipe().batch_size
    count = min(len(fit), batch * CALIBRATION_STEPS)
    sample = Split(fit.images[:count], fit.labels[:count])
    tiny = Split(fit.images[:batch], fit.labels[:batch])
    torch.manual_seed(0)
    with torch_threads(threads):
        # A first, untimed pass pays the one-off costs (allocator, kernel selection) that
        # would otherwise double a figure taken over a dozen steps.
        train(build(spec), tiny, tiny, Recipe(epochs=1), device=device)
        model = build(spec)
        started = time.perf_counter()
        train(model, sample, tiny, Recipe(epochs=1), device=device)
        return count / (time.perf_counter() - started)


def typical_candidate(
    budget: int, mac_cap: int, activation_cap: int, draws: int = TYPICAL_DRAWS
) -> Spec:
    """The candidate of median MACs among ``draws`` drawn at random from the space at
    ``budget`` within both caps (always the same draws: the estimate is reproducible)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)
    specs = []
    for _ in range(draws):
        trial = study.ask()
        specs.append(sample_architecture(trial, budget, mac_cap, activation_cap))
        study.tell(trial, 0.0)
    specs.sort(key=lambda spec: analyse(spec).macs)
    return specs[len(specs) // 2]


def estimate_cost(
    *,
    fit: Split,
    device: torch.device,
    epochs: int,
    trials: int,
    pruner: str,
    budget: int,
    mac_cap: int,
    activation_cap: int,
    workers: int = 1,
    threads: int | None = None,
    confirm_seeds: int = 0,
    train_subset: int | None = None,
    study: optuna.Study | None = None,
) -> CostEstimate:
    """The estimate for a search of ``trials`` more trials on ``fit`` (see the module
    doc): from ``study``'s measured pace when it has trained a few candidates, else from
    a calibration on ``device`` with ``threads``, a worker's CPU threads."""
    measured = measured_epoch_seconds(study) if study is not None else None
    if measured:
        epoch_seconds, candidates = measured
        source = f"measured on {candidates} candidates of this study"
    else:
        spec = typical_candidate(budget, mac_cap, activation_cap)
        rate = images_per_second(fit, device, spec, threads if device.type == "cpu" else None)
        epoch_seconds = len(fit) / rate
        if device.type != "cpu":
            # Workers share the card that the calibration had to itself. On a CPU each
            # worker was calibrated on its own cores.
            epoch_seconds *= workers
        source = "calibrated"
    if pruner == "rungs":
        screening = SCREENING_RUNGS if study is None else study_screening(study)
        rungs = rungs_for(epochs, len(fit), screening)
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
