"""One trial: a candidate sampled, checked against the budget, trained and stored.

Its exact parameter count is known before any training (``space.analyse``), so a
candidate over the budget costs nothing: it is pruned with the reason recorded and the
violation handed to TPE through ``trial.set_constraint``. The rest train on the fit
split, report validation accuracy each epoch so the pruner can stop losers, and leave
their weights in Optuna's artifact store.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from search.data import Split
from search.sampler import sample_architecture, sample_recipe
from search.storage import artifact_store
from search.train import EpochStats, NonFiniteLoss, Recipe, train
from space import ZOO, SpecError, analyse, build, normalise

if TYPE_CHECKING:
    from search.study import SearchConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """Another worker already started the trial that completes --trials; this one yields."""


class Objective:
    """One trial: sample, check the budget, train, store the weights."""

    def __init__(self, config: SearchConfig, fit: Split, validation: Split, device: torch.device):
        self.config = config
        self.fit = fit
        self.validation = validation
        self.device = device
        self.store = artifact_store(config.artifacts)
        # The trial this process runs now, so that Ctrl-C outside training can still fail it.
        self.trial_number: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.config
        self.trial_number = trial.number
        if not _claim_slot(trial, config.trials):
            raise SurplusTrial(f"trial {trial.number}: --trials {config.trials} already reached")
        zoo_name = trial.user_attrs.get("zoo")
        if zoo_name:  # enqueued by --warm-start: a reference net with the default recipe
            spec, recipe = ZOO[zoo_name], Recipe(epochs=config.epochs)
        else:
            spec, recipe = (
                sample_architecture(trial, config.budget),
                sample_recipe(trial, config.epochs),
            )
        try:
            spec = normalise(spec)
            analysis = analyse(spec)
        except SpecError as error:
            _prune_untrained(trial, f"invalid spec: {error}", over_budget=1.0)
        trial.set_user_attr("spec", spec)
        trial.set_user_attr("params", analysis.params)
        trial.set_user_attr("receptive_field", analysis.receptive_field)
        trial.set_user_attr("recipe", dataclasses.asdict(recipe))
        over = analysis.params - config.budget
        if over > 0:
            reason = f"{analysis.params:,} parameters > budget {config.budget:,}"
            _prune_untrained(trial, reason, over_budget=float(over))
        _set_constraint(trial, float(over))

        curve: list[dict] = []

        def on_epoch(stats: EpochStats) -> None:
            curve.append(
                {
                    "epoch": stats.epoch,
                    "loss": stats.train_loss,
                    "val_accuracy": stats.accuracy,
                    "seconds": stats.seconds,
                }
            )
            trial.set_user_attr("curve", curve)
            if config.epoch_lines:
                print(
                    f"  trial {trial.number} epoch {stats.epoch}/{recipe.epochs}: "
                    f"val {stats.accuracy:.2f}% ({stats.seconds:.0f} s)",
                    flush=True,
                )
            trial.report(stats.accuracy, stats.epoch)
            if trial.should_prune():
                trial.set_user_attr(
                    "pruned_reason",
                    f"pruner stopped it after epoch {stats.epoch} at {stats.accuracy:.2f}%",
                )
                raise optuna.TrialPruned()

        torch.manual_seed(config.seed + trial.number)
        model = build(spec)
        trial.set_user_attr("device", str(self.device))
        # Which process ran it: with workers on several machines, where to look for its log.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        started = time.perf_counter()
        try:
            result = train(
                model,
                self.fit,
                self.validation,
                recipe,
                seed=config.seed + trial.number,
                device=self.device,
                on_epoch=on_epoch,
                progress=config.progress_bars and config.workers == 1,
            )
        except NonFiniteLoss as error:
            trial.set_user_attr("pruned_reason", f"non-finite loss: {error}")
            raise optuna.TrialPruned() from None
        except torch.cuda.OutOfMemoryError:
            trial.set_user_attr("fail_reason", "CUDA out of memory (batch or widths too large)")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        finally:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 2))
        self._save_weights(trial, result.state_dict)
        return result.accuracy

    def _save_weights(self, trial: optuna.Trial, state_dict: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial{trial.number}.pt"
            torch.save(state_dict, path)
            artifact_id = upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial
            )
        trial.set_user_attr("weights", artifact_id)


def _prune_untrained(trial: optuna.Trial, reason: str, over_budget: float) -> NoReturn:
    _set_constraint(trial, over_budget)
    trial.set_user_attr("pruned_reason", reason)
    raise optuna.TrialPruned(reason)


def _set_constraint(trial: optuna.Trial, over_budget: float) -> None:
    """Hand TPE the budget violation, once.

    A trial retried after its worker died (RetryHeartbeatStaleTrialCallback) inherits the
    failed trial's system attributes, constraint included; setting it again would only
    make Optuna warn, and the value is the same since the architecture is.
    """
    if "params_over_budget" not in trial.constraints:
        trial.set_constraint("params_over_budget", over_budget)


def _claim_slot(trial: optuna.Trial, trials: int) -> bool:
    """True when this trial is among the first ``trials`` to finish or run.

    Workers check before asking for a trial, but two can ask at once; the one with the
    lower trial number wins, so the study ends with exactly ``trials`` finished trials.
    This holds under any number of workers because storages number trials under a lock
    (RDBStorage locks the study row): when a trial looks, every trial with a lower number
    is already visible as running or finished, so the highest of any ``trials + 1`` trials
    that would all finish sees the other ``trials`` ahead of it and yields. A yielded slot
    whose holder later fails is taken up again by the waiting in ``run_worker``.
    """
    others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    ahead = [t for t in others if t.state != TrialState.RUNNING or t.number < trial.number]
    return len(ahead) < trials
