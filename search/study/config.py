"""What a search is asked to do, checked, and the words its trials are recorded in.

``SearchConfig`` holds everything ``budgetnas search`` takes; the constants below are
the vocabulary the study, the results tables and the CLI share: the trial states that
count as finished, the constraints handed to TPE, the settings a resume must keep.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

import optuna
import torch
from optuna.trial import TrialState

from search.engine.train import autocast_dtype, resolve_device
from search.errors import UsageError
from search.study.promotion import RungPromotion
from search.study.sampler import default_max_activations, default_max_macs
from search.study.storage import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, check_storage_url

METRIC_NAME = "validation accuracy %"
PRUNERS = ("rungs", "median", "halving", "hyperband", "none")
# Study settings that must not change when a search is resumed: trials trained under
# other settings would not be comparable.
FIXED_SETTINGS = ("budget", "epochs", "val_size", "train_subset", "seed")
GPU_HEADROOM = 0.05  # of a shared card's memory, left to the workers' CUDA contexts
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The limits a candidate is checked against before training, as TPE constraints.
CAP_CONSTRAINTS = ("macs_over_cap", "activations_over_cap")
CONSTRAINTS = ("params_over_budget", *CAP_CONSTRAINTS)


@dataclass
class SearchConfig:
    """Everything ``budgetnas search`` takes; validated by ``check``."""

    budget: int = 8000
    epochs: int = 15
    target: float = 99.4
    trials: int = 50
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    artifacts: str = DEFAULT_ARTIFACTS
    data_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"  # autocast dtype of training: auto, fp32, bf16, fp16
    seed: int = 0
    timeout: float | None = None
    # time.time() when the run began: --timeout counts from it in every worker, so that
    # spawned workers (which start after the data loading and the cost estimate) stop
    # when the confirmation that follows them expects. None: when the worker starts.
    started_at: float | None = None
    train_subset: int | None = None
    val_size: int = 10_000
    pruner: str = "rungs"
    max_macs: int | None = None  # compute cap per image; None: sampler.default_max_macs
    max_activations: int | None = None  # None: sampler.default_max_activations
    warm_start: bool = False
    # Queue the nets earlier searches found (search.study.transfer) when the study is new.
    transfer: bool = False
    confirm_seeds: int = 0  # seeds the confirmation after the search will train, if any
    # Stop at the first confirmed net that clears the target (needs confirm_seeds): a
    # trial likely to clear pauses the search and is confirmed with every worker's cores.
    # False: search until --timeout or --trials for the best net, then confirm.
    stop_when_answered: bool = False
    workers: int = 1
    heartbeat: int = 60
    estimate: bool = False  # print what the search will cost before it trains anything
    estimated_trial_seconds: float | None = None  # the ETA's pace until trials finish
    progress_bars: bool = False  # live per-batch bars, for a terminal
    epoch_lines: bool = True  # one line per epoch, for logs and many workers

    @property
    def mac_cap(self) -> int:
        """The compute cap in force: ``max_macs``, or the default for the budget."""
        return default_max_macs(self.budget) if self.max_macs is None else self.max_macs

    @property
    def activation_cap(self) -> int:
        """The activation cap in force: ``max_activations``, or the default for the budget."""
        if self.max_activations is None:
            return default_max_activations(self.budget)
        return self.max_activations

    @property
    def confirms_answers(self) -> bool:
        """Whether a trial likely to clear the target pauses the search for its confirmation."""
        return self.stop_when_answered and self.confirm_seeds > 0

    def deadline(self) -> float:
        """time.monotonic() by which the run must end: ``inf`` without --timeout."""
        if self.timeout is None:
            return math.inf
        started = time.time() if self.started_at is None else self.started_at
        return time.monotonic() + started + self.timeout - time.time()

    @property
    def run_started(self) -> datetime | None:
        """When this run began, in the local time Optuna dates trials with: the trials
        started from then on are this run's, and measure its pace."""
        return None if self.started_at is None else datetime.fromtimestamp(self.started_at)

    @property
    def study_name(self) -> str:
        return self.study or f"mnist-{self.budget}p-{self.epochs}e"

    def check(self) -> None:
        """Raise UsageError for a value no search could run with."""
        rules = [
            (_is_int(self.budget) and self.budget > 0, "--budget must be a positive integer"),
            (_is_int(self.epochs) and self.epochs > 0, "--epochs must be a positive integer"),
            (0 < self.target <= 100, "--target must be a percentage in (0, 100]"),
            (_is_int(self.trials) and self.trials > 0, "--trials must be a positive integer"),
            (self.pruner in PRUNERS, f"--pruner must be one of {', '.join(PRUNERS)}"),
            (_is_int(self.workers) and self.workers >= 1, "--workers must be at least 1"),
            (
                self.max_macs is None or (_is_int(self.max_macs) and self.max_macs > 0),
                "--max-macs must be a positive integer",
            ),
            (
                self.max_activations is None
                or (_is_int(self.max_activations) and self.max_activations > 0),
                "--max-activations must be a positive integer",
            ),
            (self.timeout is None or self.timeout > 0, "--timeout must be a positive number"),
            (
                self.train_subset is None or 0 < self.train_subset <= 60_000 - self.val_size,
                f"--train-subset must be between 1 and {60_000 - self.val_size}",
            ),
            (0 < self.val_size < 60_000, "--val-size must be between 1 and 59999"),
            (self.heartbeat > 0, "--heartbeat must be a positive number of seconds"),
        ]
        for ok, message in rules:
            if not ok:
                raise UsageError(message)
        check_precision(check_device(self.device), self.precision)
        check_storage_url(self.storage, must_exist=False)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as error:
        raise UsageError(str(error)) from None


def check_precision(device: torch.device, precision: str) -> None:
    """UsageError when ``precision`` is unknown or ``device`` cannot train in it."""
    try:
        autocast_dtype(device, precision)
    except ValueError as error:
        raise UsageError(f"--{error}") from None


def share_gpu(device: torch.device, workers: int) -> None:
    """Cap this process's CUDA allocations to its share of the card among ``workers``.

    Trials side by side on one GPU then cannot starve each other: a trial that outgrows
    its share raises CUDA out-of-memory, which fails that trial alone, with the reason
    recorded. The shares leave GPU_HEADROOM of the card to the workers' CUDA contexts,
    which sit outside the allocator's cap.
    """
    if device.type == "cuda" and workers > 1:
        torch.cuda.set_per_process_memory_fraction((1 - GPU_HEADROOM) / workers, device)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner that stops losing trials.

    "rungs" (the default) is successive halving over the rungs of ``search.study.plan``: each
    rung a training of its own, reported as one step, promoted by ASHA's rule
    (``search.study.promotion``). The others judge one full-length
    training epoch by epoch; their warm-up skips the noisy first epochs. The median pruner starts judging after 2 complete trials, not Optuna's default 5: a
    CPU search affords a few dozen trials, and until the pruner starts, every poor
    candidate trains to the end.
    """
    if name == "rungs":
        return RungPromotion()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 4))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()
