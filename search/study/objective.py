"""One trial: a candidate sampled, checked against the budget, trained and stored.

Its exact parameter count, MACs and activations are known before any training
(``space.analyse``), so a candidate over the budget or a compute cap costs nothing: it
is pruned with the reason recorded and each violation handed to TPE through
``trial.set_constraint``.

The rest climb the rungs of the search plan (``search.study.plan``): a short training with
its own complete schedule, then a longer one, then the full epoch cap, each trained
afresh and reported as one step of the trial, so that Optuna's successive-halving
pruner promotes only the best of each rung. With another pruner the trial is one
full-length training that reports every epoch, as in Optuna's PyTorch example. A
finished trial leaves its weights in Optuna's artifact store.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import optuna
import optuna_dashboard
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState

from search.engine.data import Split
from search.engine.memory import is_cpu_out_of_memory, out_of_memory_reason
from search.engine.train import (
    STEP,
    EpochStats,
    NonFiniteLoss,
    Recipe,
    TrainResult,
    autocast_dtype,
    precision_name,
    train,
)
from search.study.config import CONSTRAINTS, FINISHED, SearchConfig
from search.study.confirm import confirmation_seconds_from, likely_answers, reserve_seconds
from search.study.plan import Rung, rungs_for, study_screening
from search.study.promotion import RESUMES, STOPPED_AT_RUNG
from search.study.sampler import sample_architecture, search_recipe
from search.study.signals import raise_if_stopped, stop_reason, stop_signals_let_through
from search.study.storage import artifact_store
from space import ZOO, SpecError, analyse, build, normalise


class OutOfTime(Exception):
    """--timeout would pass during the trial's next rung: it stops, failed, and is queued
    to run first when the search is resumed."""


class Paused(OutOfTime):
    """Another trial is likely to clear the target and is about to be confirmed: this one
    stops before its next rung and is queued to run first when the search goes on."""


class SurplusTrial(Exception):
    """Another worker already started the trial that completes --trials; this one yields."""


class CPUOutOfMemory(MemoryError):
    """A trial's training ran out of CPU memory: that trial fails, the study goes on."""


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
        self.deadline = math.inf  # time.monotonic() after which no rung may start
        self.slowest_first_rung = 0.0  # seconds: what starting another trial may cost

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial with stop signals let through (see ``stop_signals_held``)."""
        with stop_signals_let_through():
            try:
                raise_if_stopped()  # one that came while Optuna sampled this trial
                return self._run(trial)
            except KeyboardInterrupt as error:
                trial.set_user_attr("fail_reason", stop_reason(error))
                raise

    def _run(self, trial: optuna.Trial) -> float:
        config = self.config
        self.trial_number = trial.number
        if not _claim_slot(trial, config.trials):
            raise SurplusTrial(f"trial {trial.number}: --trials {config.trials} already reached")
        zoo_name = trial.user_attrs.get("zoo")
        known = trial.user_attrs.get("given_spec")  # queued by transfer (search.study.transfer)
        if known:
            spec = known
        elif zoo_name:  # enqueued by --warm-start: a reference net
            spec = ZOO[zoo_name]
        else:
            spec = sample_architecture(trial, config.budget, config.mac_cap, config.activation_cap)
        if "origin" not in trial.user_attrs:
            trial.set_user_attr(
                "origin", f"reference net {zoo_name} (warm start)" if zoo_name else "sampled"
            )
        origin = trial.user_attrs["origin"]
        recipe = search_recipe(config.epochs)
        try:
            spec = normalise(spec)
            analysis = analyse(spec)
        except SpecError as error:
            _prune_untrained(trial, f"invalid spec: {error}", {key: 1.0 for key in CONSTRAINTS})
        trial.set_user_attr("spec", spec)
        trial.set_user_attr("params", analysis.params)
        trial.set_user_attr("macs", analysis.macs)
        trial.set_user_attr("activations", analysis.activations)
        trial.set_user_attr("receptive_field", analysis.receptive_field)
        trial.set_user_attr("recipe", dataclasses.asdict(recipe))
        limits = {  # constraint: (count, limit, what is counted > which limit)
            "params_over_budget": (analysis.params, config.budget, "parameters > budget"),
            "macs_over_cap": (analysis.macs, config.mac_cap, "MACs > cap"),
            "activations_over_cap": (
                analysis.activations,
                config.activation_cap,
                "activations > cap",
            ),
        }
        violations = {key: float(count - limit) for key, (count, limit, _) in limits.items()}
        reasons = [
            f"{count:,} {what} {limit:,}"
            for key, (count, limit, what) in limits.items()
            if violations[key] > 0
        ]
        if reasons:
            _prune_untrained(trial, "; ".join(reasons), violations)
        _set_constraints(trial, violations)
        # The dashboard's trial page shows this note; a queued known net has no Params.
        optuna_dashboard.save_note(
            trial,
            f"**{origin[0].upper()}{origin[1:]}**: {analysis.params:,} parameters, "
            f"{analysis.macs:,} MACs and "
            f"{analysis.activations:,} activations per image, "
            f"receptive field {analysis.receptive_field}.",
        )
        trial.set_user_attr("device", str(self.device))
        trial.set_user_attr(
            "precision", precision_name(autocast_dtype(self.device, config.precision))
        )
        trial.set_user_attr("fit_images", len(self.fit))
        trial.set_user_attr("step", STEP)
        # Which process ran it: with workers on several machines, where to look for its log.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        started = time.perf_counter()
        try:
            if config.pruner == "rungs":
                rungs = rungs_for(config.epochs, len(self.fit), study_screening(trial.study))
                # A known net proved itself at full length where it was found.
                result = self._climb(trial, spec, rungs[-1:] if known else rungs)
            else:
                result = self._train(trial, spec, recipe, self.fit, report=True)
        except NonFiniteLoss as error:
            trial.set_user_attr("pruned_reason", f"non-finite loss: {error}")
            raise optuna.TrialPruned() from None
        except torch.cuda.OutOfMemoryError:
            trial.set_user_attr("fail_reason", "CUDA out of memory (batch or widths too large)")
            raise
        except (MemoryError, RuntimeError) as error:
            if not is_cpu_out_of_memory(error):
                raise
            reason = out_of_memory_reason(error)
            trial.set_user_attr("fail_reason", reason)
            raise CPUOutOfMemory(reason) from error
        finally:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 2))
        self._save_weights(trial, result.state_dict)
        return result.accuracy

    def _climb(self, trial: optuna.Trial, spec: dict, rungs: list[Rung]) -> TrainResult:
        """Train on each rung afresh; report each rung's accuracy as step ``rung.step`` and
        stop where the pruner says. Only the last rung (the full cap) is the result.

        A rung that would not end in time (its time scaled from the rung before) is not
        started: the trial fails with OutOfTime and is queued for the resume. In time
        means leaving the confirmation of the best trial so far and, for the full rung,
        of this trial too, which may become the best: otherwise a search under
        --timeout can end with a winner it has no time left to confirm.
        """
        config = self.config
        previous: tuple[float, float] | None = None  # (seconds, cost) of the last rung
        earlier = _earlier_results(trial)
        for rung in rungs:
            images = rung.images or len(self.fit)
            cost = rung.epochs * images
            if rung.step in earlier:  # taken up again: this rung's result is known
                accuracy, seconds = earlier[rung.step]
                previous = (seconds, cost)
                _report(
                    trial, accuracy, rung.step, f"not promoted past {rung.name} at {accuracy:.2f}%"
                )
                continue
            if config.confirms_answers and rung is not rungs[0]:
                likely = likely_answers(trial.study, config.target)
                if likely:
                    reason = f"paused: trial {likely[0].number} is likely to clear the target"
                    trial.set_user_attr("fail_reason", reason)
                    raise Paused(reason)
            if previous is not None and self.deadline < math.inf:
                needed = previous[0] * cost / previous[1]
                confirm = (config.confirm_seeds, config.train_subset, config.workers)
                reserve = reserve_seconds(
                    trial.study, config.target, *confirm, started=config.run_started
                )
                if rung is rungs[-1]:
                    reserve = max(reserve, confirmation_seconds_from(needed, images, *confirm))
                if time.monotonic() + needed + reserve > self.deadline:
                    reason = f"--timeout: no time left for the {rung.name} (about {needed:.0f} s)"
                    if reserve:
                        reason += f" and a confirmation (about {reserve:.0f} s)"
                    trial.set_user_attr("fail_reason", reason)
                    raise OutOfTime(reason)
            fit = Split(self.fit.images[:images], self.fit.labels[:images])
            final = rung is rungs[-1]
            label = "full" if final else rung.name
            result = self._train(trial, spec, search_recipe(rung.epochs), fit, label=label)
            if final:
                return result
            if previous is None:
                self.slowest_first_rung = max(self.slowest_first_rung, result.seconds)
            previous = (result.seconds, cost)
            _report(
                trial,
                result.accuracy,
                rung.step,
                f"not promoted past {rung.name} at {result.accuracy:.2f}% (yet)",
                rung=True,
            )
        raise AssertionError("the plan ends with the full rung")

    def _train(
        self,
        trial: optuna.Trial,
        spec: dict,
        recipe: Recipe,
        fit: Split,
        *,
        report: bool = False,
        label: str = "full",
    ) -> TrainResult:
        """One training from a fresh init. With ``report``, each epoch's accuracy is an
        intermediate value the pruner may stop it on (one-training-per-trial pruners)."""
        config = self.config
        curve: list[dict] = []
        curves = trial.user_attrs.get("curves", {})

        def on_epoch(stats: EpochStats) -> None:
            raise_if_stopped()
            curve.append(
                {
                    "epoch": stats.epoch,
                    "loss": stats.train_loss,
                    "val_accuracy": stats.accuracy,
                    "seconds": stats.seconds,
                }
            )
            trial.set_user_attr("curves", {**curves, label: curve})
            if label == "full":
                trial.set_user_attr("curve", curve)
                trial.set_user_attr(
                    "epoch_seconds", round(statistics.fmean(e["seconds"] for e in curve), 2)
                )
            if config.epoch_lines:
                print(
                    f"  trial {trial.number} {label} epoch {stats.epoch}/{recipe.epochs}: "
                    f"val {stats.accuracy:.2f}% ({stats.seconds:.0f} s)",
                    flush=True,
                )
            if report:
                _report(
                    trial,
                    stats.accuracy,
                    stats.epoch,
                    f"pruner stopped it after epoch {stats.epoch} at {stats.accuracy:.2f}%",
                )

        torch.manual_seed(config.seed + trial.number)
        return train(
            build(spec),
            fit,
            self.validation,
            recipe,
            seed=config.seed + trial.number,
            device=self.device,
            on_epoch=on_epoch,
            progress=config.progress_bars and config.workers == 1,
            precision=config.precision,
        )

    def _save_weights(self, trial: optuna.Trial, state_dict: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial{trial.number}.pt"
            torch.save(state_dict, path)
            artifact_id = upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial
            )
        trial.set_user_attr("weights", artifact_id)


def _report(
    trial: optuna.Trial, accuracy: float, step: int, reason: str, *, rung: bool = False
) -> None:
    """Report ``accuracy`` as ``step`` and stop the trial, with ``reason``, if the pruner
    says so. A trial stopped at a ``rung`` records it: it may be taken up again there
    (``search.study.promotion``)."""
    trial.report(accuracy, step)
    if trial.should_prune():
        trial.set_user_attr("pruned_reason", reason)
        if rung:
            trial.set_user_attr(STOPPED_AT_RUNG, step)
        raise optuna.TrialPruned()


def _earlier_results(trial: optuna.Trial) -> dict[int, tuple[float, float]]:
    """{step: (accuracy, seconds)} of the rungs a taken-up trial already ran, as the
    stopped trial it continues recorded them (``search.study.promotion``); {} otherwise."""
    number = trial.user_attrs.get(RESUMES)
    if number is None:
        return {}
    stopped = trial.study.get_trials(deepcopy=False)[number]
    curves = stopped.user_attrs.get("curves", {})
    seconds = [sum(epoch["seconds"] for epoch in curve) for curve in curves.values()]
    steps = sorted(stopped.intermediate_values)
    return {
        step: (stopped.intermediate_values[step], seconds[index] if index < len(seconds) else 0.0)
        for index, step in enumerate(steps)
    }


def _prune_untrained(trial: optuna.Trial, reason: str, violations: dict[str, float]) -> NoReturn:
    _set_constraints(trial, violations)
    trial.set_user_attr("pruned_reason", reason)
    raise optuna.TrialPruned(reason)


def _set_constraints(trial: optuna.Trial, violations: dict[str, float]) -> None:
    """Hand TPE the budget and compute-cap violations (> 0 violates), once each.

    A trial retried after its worker died (RetryHeartbeatStaleTrialCallback) inherits the
    failed trial's system attributes, constraints included; setting them again would only
    make Optuna warn, and the values are the same since the architecture is.
    """
    for key, value in violations.items():
        if key not in trial.constraints:
            trial.set_constraint(key, value)


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
