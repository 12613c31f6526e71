"""The search: a study of trials (see ``search.study.objective``), run by one or more workers.

A study is created with its settings recorded (budget, epoch cap, split), resumed by
re-running the same command, and worked on by any number of processes on any number
of machines until it holds exactly ``--trials`` finished trials.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import TextIO

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.engine.data import search_data
from search.errors import UsageError
from search.study.config import (
    FINISHED,
    FIXED_SETTINGS,
    METRIC_NAME,
    SearchConfig,
    check_device,
    make_pruner,
    share_gpu,
)
from search.study.confirm import (
    LIKELY_MARGIN,
    confirm_study,
    confirmations,
    likely_answers,
    reserve_seconds,
    selected,
)
from search.study.estimate import estimate_cost
from search.study.objective import CPUOutOfMemory, Objective, OutOfTime, SurplusTrial
from search.study.plan import SCREENING_KEY, SCREENING_RUNGS
from search.study.promotion import take_up_promotion
from search.study.signals import (
    Terminated,
    handle_stop_signals,
    raise_if_stopped,
    stop_signals_held,
)
from search.study.storage import MAX_RETRIES, open_storage
from search.study.transfer import queue_known_nets, shipped_models, study_nets
from space import ZOO, analyse

INTERRUPTED = 130  # exit code of a worker process stopped by Ctrl-C, as a shell would set
TERMINATED = 143  # ... and by SIGTERM
# How often a worker whose remaining slots are all held by running trials looks again: one
# of those trials may yet fail (CUDA OOM, Ctrl-C, a dead worker) and free its slot.
WAIT_POLL_S = 1.0
WAIT_NOTICE_S = 10.0  # say why a worker sits idle once it has waited this long
# What a queued candidate is, beyond its sampled parameters: kept when it is queued again.
QUEUED_ATTRS = ("zoo", "given_spec", "origin")


class _RecordedFailures(logging.Filter):
    """Drops Optuna's warning and traceback for the failures budgetnas expects and reports
    itself: a surplus trial (routine with several workers), CUDA OOM (the trial's line
    gives the reason) and Ctrl-C (the CLI says how to resume). Other failures, bugs
    included, are still logged in full.
    """

    EXPECTED = (
        SurplusTrial,
        torch.cuda.OutOfMemoryError,
        CPUOutOfMemory,
        OutOfTime,
        KeyboardInterrupt,
    )

    def __init__(self) -> None:
        super().__init__()
        self.dropped: set[str] = set()  # "Trial N failed with" prefixes of dropped reports

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Trial ") or " failed with " not in message:
            return True
        prefix = message.split(" failed with ")[0]
        if record.exc_info and isinstance(record.exc_info[1], self.EXPECTED):
            self.dropped.add(prefix)
            return False
        if message.startswith(f"{prefix} failed with value") and prefix in self.dropped:
            self.dropped.discard(prefix)  # Optuna's second line about the same trial
            return False
        return True


_QUIET_FAILURES = _RecordedFailures()


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def create_or_resume(config: SearchConfig) -> optuna.Study:
    """The study for ``config``: created with its settings recorded, or resumed when they
    match (resuming under another budget or epoch cap would mix incomparable trials)."""
    storage = open_storage(config.storage, heartbeat_interval=config.heartbeat)
    settings = {
        "budget": config.budget,
        "epochs": config.epochs,
        "target": config.target,
        "val_size": config.val_size,
        "train_subset": config.train_subset,
        "seed": config.seed,
        "pruner": config.pruner,  # what 'budgetnas worker' uses unless told otherwise
        "precision": config.precision,  # likewise; "auto" picks per device
        "max_macs": config.mac_cap,
        "max_activations": config.activation_cap,
        "transfer": config.transfer,
    }
    name = config.study_name
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=_sampler(config),
            pruner=make_pruner(config.pruner, config.epochs),
        )
        recorded = study.user_attrs.get("settings", {})
        for key in FIXED_SETTINGS:
            if key in recorded and recorded[key] != settings[key]:
                raise UsageError(
                    f"study {name!r} was run with {key}={recorded[key]}, not {settings[key]}; "
                    "use the same value to resume or --study NEW_NAME for a new search"
                )
        study.set_user_attr("trials", config.trials)
        # What may change on resume is what the user asked for this time.
        study.set_user_attr("settings", {**recorded, **settings})
        return study
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=_sampler(config),
        pruner=make_pruner(config.pruner, config.epochs),
    )
    study.set_user_attr("settings", settings)
    study.set_user_attr("trials", config.trials)  # what 'budgetnas worker' joins in for
    study.set_user_attr(SCREENING_KEY, [list(rung) for rung in SCREENING_RUNGS])
    with warnings.catch_warnings():  # experimental in Optuna, and what the dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAME])
    if config.transfer:
        known = [*shipped_models(), *study_nets(storage, exclude=name)]
        queued = queue_known_nets(
            study, known, config.budget, config.mac_cap, config.activation_cap
        )
        for origin in queued:
            print(f"transfer: queued {origin}", flush=True)
    if config.warm_start:
        for zoo_name, spec in ZOO.items():
            if analyse(spec).params <= config.budget:
                study.enqueue_trial({}, user_attrs={"zoo": zoo_name})
    return study


def _sampler(config: SearchConfig, worker: int = 0, history: int = 0) -> optuna.samplers.TPESampler:
    """TPE seeded for this worker and for the trials the study already holds.

    Each worker seeds its own sampler: identical seeds would propose identical trials.
    A resumed search seeds by ``history`` (the trials that ran) too: with the seed of the
    first run, TPE's random start-up would propose that run's candidates again, in the
    same order, and train them a second time. A fresh study keeps the plain seed.
    """
    seed = config.seed + 1000 * worker
    if history:
        seed = random.Random(f"{seed}:{history}").getrandbits(32)
    return optuna.samplers.TPESampler(seed=seed)


TrialLogger = Callable[[optuna.Study, FrozenTrial], None]


def trial_line(trial: FrozenTrial) -> str:
    """One line per finished trial: number, parameters, validation accuracy, state, seconds."""
    params = trial.user_attrs.get("params")
    params_text = f"{params:>7,} params" if params is not None else "      ? params"
    macs = trial.user_attrs.get("macs")
    params_text += f" {macs / 1e6:5.2f} M MACs" if macs is not None else "       ? MACs"
    value = f"val {trial.value:6.2f}%" if trial.value is not None else _last_value(trial)
    seconds = trial.user_attrs.get("train_seconds", 0.0)
    reason = trial.user_attrs.get("pruned_reason") or trial.user_attrs.get("fail_reason") or ""
    return f"trial {trial.number:>4}: {params_text}  {value}  {trial.state.name:<8} {seconds:7.1f} s  {reason}".rstrip()


def _last_value(trial: FrozenTrial) -> str:
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"val {trial.intermediate_values[step]:6.2f}%"
    return "val     - "


class Progress:
    """Prints each finished trial and an overall bar with an ETA across the run.

    The ETA is wall time per finished trial times the trials left, capped by --timeout.
    Until a trial that trained has finished it is the up-front estimate, when there is
    one, else unknown: over-budget candidates are pruned in milliseconds, and a run of
    them alone would promise a search of seconds.
    """

    def __init__(
        self,
        study: optuna.Study,
        total: int,
        out: TextIO | None = None,
        timeout: float | None = None,
        estimated_trial_seconds: float | None = None,
        workers: int = 1,
    ):
        self.total, self.out = total, out
        self.done_at_start = finished_count(study)
        self.started = time.perf_counter()
        self.timeout = math.inf if timeout is None else timeout
        self.estimated_trial_seconds = estimated_trial_seconds
        self.workers = workers
        self.trained = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            if trial.user_attrs.get("fail_reason"):
                print(trial_line(trial), file=self.out, flush=True)
            return
        self.trained = self.trained or bool(trial.intermediate_values)
        done = finished_count(study)
        left = max(0, self.total - done)
        ran = max(1, done - self.done_at_start)
        elapsed = time.perf_counter() - self.started
        if self.trained:
            eta: float | None = elapsed / ran * left
        elif self.estimated_trial_seconds is not None:
            eta = self.estimated_trial_seconds * left / self.workers
        else:
            eta = None
        width = 24
        filled = min(width, round(width * done / self.total))
        bar = "#" * filled + "-" * (width - filled)
        print(trial_line(trial), file=self.out, flush=True)
        when = "unknown" if eta is None else clock(min(eta, max(0.0, self.timeout - elapsed)))
        print(
            f"[{bar}] {min(done, self.total)}/{self.total} trials  ETA {when}",
            file=self.out,
            flush=True,
        )


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_worker(config: SearchConfig, worker: int = 0, parent_pid: int | None = None) -> None:
    """Run trials in this process until the study has ``config.trials`` finished trials
    (or the timeout passes). Every worker, local or on another machine, runs this.

    A worker leaves only once the study is done, not as soon as the last slots are taken:
    a running trial may still fail (CUDA OOM, Ctrl-C, a killed worker whose heartbeat
    stops), and the study would end short of ``config.trials`` if nobody took its slot.
    ``parent_pid`` is set in workers that ``run_search`` spawned: once that process is
    gone (killed), they finish their trial and stop rather than run on unseen.
    """
    device = check_device(config.device)
    share_gpu(device, config.workers)
    if device.type == "cpu" and config.workers > 1:
        # Side-by-side single-thread trials use the cores better than one wide trial.
        torch.set_num_threads(threads_per_worker(config.workers))
    fit, validation = search_data(
        config.data_dir, device, config.val_size, config.seed, config.train_subset
    )
    storage = open_storage(config.storage, heartbeat_interval=config.heartbeat)
    study = optuna.load_study(
        study_name=config.study_name,
        storage=storage,
        sampler=_sampler(config, worker),
        pruner=make_pruner(config.pruner, config.epochs),
    )
    ran = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL, TrialState.RUNNING))
    study.sampler = _sampler(config, worker, history=len(ran))
    objective = Objective(config, fit, validation, device)
    progress = Progress(
        study,
        config.trials,
        timeout=config.timeout,
        estimated_trial_seconds=config.estimated_trial_seconds,
        workers=config.workers,
    )
    optuna.logging.get_logger("optuna.study._optimize").addFilter(_QUIET_FAILURES)
    deadline = config.deadline()
    objective.deadline = deadline
    waiting_since: float | None = None  # when the remaining slots were all taken
    noticed = False
    # Candidates that --timeout stopped are queued for a resume only when this run ends:
    # queued at once, the next trial here would be the same candidate, retraining the
    # rungs it had just trained only to be stopped at the same rung again.
    started: list[int] = []  # the trials this run started
    try:
        # A new trial's first rung is not checked against the clock (nothing measured says
        # what it costs yet): start one only if the slowest first rung so far still ends
        # before the confirmation's reserve.
        while (
            time.monotonic() + objective.slowest_first_rung + _confirmation_reserve(study, config)
            < deadline
        ):
            raise_if_stopped()  # a stop signal lost between trials
            if parent_pid is not None and os.getppid() != parent_pid:
                print(f"worker {worker}: the search process is gone; stopping", file=sys.stderr)
                return
            _fail_stale_trials(study)  # a dead worker's trial must not hold a slot
            finished = finished_count(study)
            if finished >= config.trials:
                return
            if config.confirms_answers and likely_answers(study, config.target):
                return  # run_search confirms it with every worker's cores
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if finished + running >= config.trials:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                elif not noticed and time.monotonic() - waiting_since >= WAIT_NOTICE_S:
                    print(_waiting_notice(worker, running, config.heartbeat), flush=True)
                    noticed = True
                time.sleep(WAIT_POLL_S)
                continue
            waiting_since, noticed = None, False
            if config.pruner == "rungs":
                climbing = take_up_promotion(study, QUEUED_ATTRS)
                if climbing is not None:
                    print(
                        f"trial {climbing.number} ranks in its rung's top third now: "
                        "taken up again from the next rung",
                        flush=True,
                    )
            objective.trial_number = None
            try:
                with stop_signals_held():
                    study.optimize(
                        objective,
                        n_trials=1,
                        catch=(
                            SurplusTrial,
                            torch.cuda.OutOfMemoryError,
                            CPUOutOfMemory,
                            OutOfTime,
                        ),
                        callbacks=[progress],
                    )
            except KeyboardInterrupt:
                if objective.trial_number is not None:
                    _requeue_interrupted(study, objective.trial_number)
                raise
            if objective.trial_number is not None:
                started.append(objective.trial_number)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after an OOM, give the memory back to other workers
    finally:
        for number in started:
            _requeue_out_of_time(study, number)


def _requeue_out_of_time(study: optuna.Study, number: int) -> None:
    """Queue the candidate of a trial that --timeout stopped, so a resume finishes it."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason", "").startswith(
        ("--timeout", "paused")
    ):
        _queue_again(study, trial)


def _confirmation_reserve(study: optuna.Study, config: SearchConfig) -> float:
    """Seconds of --timeout to leave for confirming the best trial so far (when the search
    will confirm): the timeout bounds the whole run."""
    if config.timeout is None:
        return 0.0
    return reserve_seconds(
        study,
        config.target,
        config.confirm_seeds,
        config.train_subset,
        config.workers,
        config.run_started,
    )


def _requeue_interrupted(study: optuna.Study, number: int) -> None:
    """Fail the trial Ctrl-C stopped and queue the same candidate to run again on resume.

    Optuna fails the trial when Ctrl-C lands in the objective; the tell here covers the
    moments around it (sampling, Optuna's own tell), so no trial is left RUNNING. The
    copy is queued as the heartbeat queues a dead worker's trial, so an interrupted
    candidate (a --warm-start reference net, say) is not silently dropped from the search.
    """

    def stored() -> FrozenTrial:
        return next(t for t in study.get_trials(deepcopy=False) if t.number == number)

    if stored().state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    trial = stored()
    if trial.state == TrialState.FAIL:
        _queue_again(study, trial)


def _queue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue ``trial``'s candidate to run again, as RetryHeartbeatStaleTrialCallback does
    (same "failed_trial" and "retry_history" system attributes, same MAX_RETRIES), but
    without its results so far: a retry that inherited "fail_reason" would report it."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    history = [*system_attrs["retry_history"], trial.number]
    if len(history) > MAX_RETRIES:
        return
    system_attrs["retry_history"] = history
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={
                key: trial.user_attrs[key] for key in QUEUED_ATTRS if key in trial.user_attrs
            },
            system_attrs=system_attrs,
        )
    )


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _waiting_notice(worker: int, running: int, heartbeat: int) -> str:
    return (
        f"worker {worker}: the last slots are held by {running} running trial(s); waiting in "
        f"case one fails (a dead worker's trial is failed and retried after {2 * heartbeat} s "
        "without a heartbeat)"
    )


def threads_per_worker(workers: int) -> int:
    """CPU threads for each of ``workers`` local workers: the usable cores, split evenly.

    Counts the cores this process may run on (a container or ``taskset`` limit), not the
    machine's, and never goes below one thread.
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def run_search(config: SearchConfig) -> optuna.Study:
    """Create or resume the study and run ``config.workers`` workers on it.

    Data and arguments are checked before the study exists, so bad input leaves no
    half-made study behind. Extra workers are spawned processes (CUDA and many BLAS
    builds do not survive fork). Ctrl-C, which a terminal sends to all of them, stops
    each at its running trial; a SIGINT sent to this process alone is passed on to them.

    With ``config.stop_when_answered`` the search stops as soon as a confirmed net clears
    the target: a trial likely to clear it (``LIKELY_MARGIN``) pauses the workers, is
    confirmed with all their cores, and the search goes on only if it falls short. The
    first confirmation that clears ends it.
    """
    config.check()
    device = check_device(config.device)
    fit, _ = search_data(config.data_dir, device, config.val_size, config.seed, config.train_subset)
    study = create_or_resume(config)
    if config.estimate:
        left = max(0, config.trials - finished_count(study))
        estimate = estimate_cost(
            fit=fit,
            device=device,
            epochs=config.epochs,
            trials=left,
            pruner=config.pruner,
            budget=config.budget,
            mac_cap=config.mac_cap,
            activation_cap=config.activation_cap,
            workers=config.workers,
            threads=threads_per_worker(config.workers),
            confirm_seeds=config.confirm_seeds,
            train_subset=config.train_subset,
            study=study,
        )
        print(estimate.line(), flush=True)
        config = dataclasses.replace(config, estimated_trial_seconds=estimate.trial_seconds)
    while True:
        _run_workers(config)
        if not config.confirms_answers or not likely_answers(study, config.target):
            return study
        confirm_study(
            study,
            config.artifacts,
            # The trials ranked above a likely one are likely too, or confirmed already.
            top_k=len(likely_answers(study, config.target)) + len(confirmations(study)),
            seeds=config.confirm_seeds,
            data_dir=config.data_dir,
            device=device,
            progress=config.progress_bars,
            deadline=config.deadline(),
            precision=config.precision,
            workers=config.workers,
            margin=LIKELY_MARGIN,
            started=config.run_started,
        )
        if selected(study) or finished_count(study) >= config.trials:
            return study
        if likely_answers(study, config.target):  # skipped: no time left to confirm it
            return study
        print("no confirmation cleared the target; the search goes on", flush=True)


def _run_workers(config: SearchConfig) -> None:
    """Run ``config.workers`` workers on the study until each of them stops."""
    if config.workers == 1:
        run_worker(config)
        return
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_worker_process,
            args=(config, index, os.getpid(), optuna.logging.get_verbosity()),
            name=f"worker {index}",
        )
        for index in range(1, config.workers)
    ]
    for child in children:
        child.start()
    try:
        run_worker(config, 0)
    except KeyboardInterrupt as error:
        # Pass the same signal on: each worker then records why its trial stopped.
        passed_on = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, passed_on)
        raise
    finally:
        for child in children:
            child.join()
    for child in children:
        if child.exitcode:
            print(
                f"{child.name} exited with code {child.exitcode}; the other workers carried on",
                file=sys.stderr,
            )


def _worker_process(config: SearchConfig, worker: int, parent_pid: int, verbosity: int) -> None:
    """Entry point of a spawned worker: Ctrl-C or SIGTERM fails its running trial and
    ends it quietly. Only the first of each counts, so a Ctrl-C from the terminal plus the
    one ``run_search`` passes on cannot interrupt the cleanup. A spawned process starts
    with Optuna's default logging, so it gets the parent's.
    """
    handle_stop_signals(interrupt_once=True)
    optuna.logging.set_verbosity(verbosity)
    try:
        run_worker(config, worker, parent_pid=parent_pid)
    except KeyboardInterrupt as error:
        sys.exit(TERMINATED if isinstance(error, Terminated) else INTERRUPTED)
