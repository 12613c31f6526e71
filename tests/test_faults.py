"""Searches survive real faults: SIGKILL mid-trial, Ctrl-C, a diverging loss, CUDA OOM.

The kill and Ctrl-C tests run the real ``budgetnas search`` in a subprocess on real MNIST
(a tiny subset, so a trial lasts seconds) against an SQLite storage in tmp_path, and
watch its progress through Optuna from outside, as a person with a dashboard would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from real_mnist import DATA, needs_data

import search.study.objective
import search.study.signals
from search.engine.train import Recipe
from search.study.config import FINISHED, SearchConfig
from search.study.run import run_search
from space import ZOO

STUDY = "faults"


def budgetnas() -> list[str]:
    """The installed console script, or the module when it is not on PATH."""
    script = shutil.which("budgetnas")
    return [script] if script else [sys.executable, "-m", "search.cli"]


EPOCHS = 3  # per trial of the searches below


def search_args(folder: Path, trials: int, workers: int = 1, images: int = 1000) -> list[str]:
    """A search whose trials train for a few seconds each on one CPU thread.

    --warm-start makes trial 0 the 7,676-parameter reference net with the default recipe,
    so the first trial always trains (a sampled one may be pruned over budget at once).
    """
    return [
        "search", "--study", STUDY, "--budget", "8000", "--epochs", str(EPOCHS),
        "--trials", str(trials), "--warm-start", "--pruner", "none",
        "--train-subset", str(images), "--val-size", "500", "--device", "cpu",
        "--storage", f"sqlite:///{folder}/s.db", "--artifacts", str(folder / "artifacts"),
        "--no-confirm", "--no-transfer", "--heartbeat", "1", "--workers", str(workers),
    ]  # fmt: skip


def child_env() -> dict[str, str]:
    # One thread: on a shared, busy CPU two spinning OpenMP threads per trial are several
    # times slower than one.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def default_sigint() -> None:
    # A search started from a background job inherits an *ignored* SIGINT, and Python then
    # never raises KeyboardInterrupt; a person at a terminal has the default, so restore it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        budgetnas() + args,
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def finish(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        budgetnas() + args, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def trials_of(folder: Path) -> list[FrozenTrial]:
    """The study's trials as stored now, read through a fresh, heartbeat-less storage."""
    storage = RDBStorage(
        f"sqlite:///{folder}/s.db", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def study_exists(folder: Path) -> bool:
    """A read-only look: opening RDBStorage while the search is still creating Optuna's
    tables would race it (both try to create them, and one fails)."""
    db = folder / "s.db"
    if not db.exists():
        return False
    uri = f"{db.as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as connection:
            query = "SELECT 1 FROM studies WHERE study_name = ?"
            return connection.execute(query, (STUDY,)).fetchone() is not None
    except sqlite3.OperationalError:  # no tables yet
        return False


def wait_for(
    folder: Path,
    process: subprocess.Popen,
    ready: Callable[[list[FrozenTrial]], FrozenTrial | None],
    timeout: float = 90,
) -> FrozenTrial:
    """Poll the storage until ``ready`` picks a trial; fail if the search ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended early:\n" + "".join(process.communicate())
        if study_exists(folder):
            found = ready(trials_of(folder))
            if found is not None:
                return found
        time.sleep(0.2)
    process.kill()
    raise AssertionError("timed out:\n" + "".join(process.communicate()))


def training(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """A RUNNING trial that is inside train() (its device is recorded just before)."""
    running = [t for t in trials if t.state == TrialState.RUNNING and "device" in t.user_attrs]
    return running[0] if running else None


def weights_file(folder: Path, trial: FrozenTrial) -> Path:
    return folder / "artifacts" / trial.user_attrs["weights"]


def assert_no_candidate_trained_twice(trials: list[FrozenTrial]) -> None:
    """A resumed search proposes new candidates; only a failed trial's retry repeats one."""
    candidates = [
        json.dumps([t.params, t.user_attrs.get("spec")], sort_keys=True)
        for t in trials
        if t.state in FINISHED and "zoo" not in t.user_attrs
    ]
    assert len(set(candidates)) == len(candidates), "a candidate was trained twice"


@needs_data
def test_sigkill_mid_trial_is_failed_retried_and_resume_loses_nothing(tmp_path: Path) -> None:
    args = search_args(tmp_path, trials=3)
    first = start(args, tmp_path)

    def after_a_completed_one(trials: list[FrozenTrial]) -> FrozenTrial | None:
        victim = training(trials)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        return victim if victim and done and done[0].number < victim.number else None

    victim = wait_for(tmp_path, first, after_a_completed_one)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    before = {t.number: t for t in trials_of(tmp_path) if t.state == TrialState.COMPLETE}
    assert before and trials_of(tmp_path)[victim.number].state == TrialState.RUNNING  # a zombie

    started = time.monotonic()
    finish(args, tmp_path)  # the same command resumes the study
    resumed_seconds = time.monotonic() - started

    trials = trials_of(tmp_path)
    assert sum(t.state in FINISHED for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[victim.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].state in FINISHED
    assert retried[0].params == victim.params
    assert retried[0].user_attrs["spec"] == victim.user_attrs["spec"]
    assert_no_candidate_trained_twice(trials)
    for number, old in before.items():  # completed trials are intact, weights included
        now = trials[number]
        assert (now.state, now.value, now.params) == (old.state, old.value, old.params)
        assert now.user_attrs["weights"] == old.user_attrs["weights"]
        assert weights_file(tmp_path, now).is_file()
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert weights_file(tmp_path, trial).is_file()
    print(f"killed trial {victim.number}; resume ran {resumed_seconds:.1f} s")


STOPS = {  # signal: (exit code, what the terminal says, the failed trial's recorded reason)
    "SIGINT": (130, "interrupted", "interrupted (Ctrl-C)"),
    "SIGTERM": (143, "terminated (SIGTERM)", "terminated (SIGTERM)"),
}


@needs_data
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sent_signal", list(STOPS))
def test_ctrl_c_or_sigterm_fails_the_running_trials_and_the_same_command_resumes(
    tmp_path: Path, workers: int, sent_signal: str
) -> None:
    """With --workers 2 the signal goes to the main process only, as with ``kill``; it
    must pass it on to the spawned worker, whose trial is failed and queued too. SIGTERM
    is what kill, timeout, systemd, Docker and SLURM send: it is handled as Ctrl-C is."""
    code, said, reason = STOPS[sent_signal]
    # With two workers: longer trials and enough of them that the spawned worker, which
    # starts seconds later, is training while the main one still is.
    trials, images = (2, 1000) if workers == 1 else (4, 3000)
    args = search_args(tmp_path, trials, workers, images)
    first = start(args, tmp_path)

    def all_workers_training(trials: list[FrozenTrial]) -> FrozenTrial | None:
        """Every worker inside a training with an epoch still to go, so that each one is
        interrupted there rather than finishing its trial before the signal lands."""
        busy = [t for t in trials if t.state == TrialState.RUNNING and "device" in t.user_attrs]
        epochs_done = [len(t.user_attrs.get("curve", [])) for t in busy]
        ready = len(busy) == workers and all(1 <= done < EPOCHS for done in epochs_done)
        return busy[0] if ready else None

    wait_for(tmp_path, first, all_workers_training)
    sent = time.monotonic()
    first.send_signal(getattr(signal, sent_signal))
    out, err = first.communicate(timeout=300)  # the pipes close once every worker is gone
    stop_seconds = time.monotonic() - sent

    assert first.returncode == code, out + err
    assert said in err
    assert shlex.join(["budgetnas", *args]) in err  # how to resume: the same command
    assert "Traceback" not in err
    stopped = trials_of(tmp_path)
    assert not [t for t in stopped if t.state == TrialState.RUNNING]
    interrupted = [t for t in stopped if t.user_attrs.get("fail_reason") == reason]
    assert len(interrupted) == workers
    assert all(t.state == TrialState.FAIL for t in interrupted)
    # Each interrupted candidate waits to run again (one is the warm-start reference net).
    queued = [t for t in stopped if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in queued) == [t.number for t in interrupted]

    finish(args, tmp_path)
    resumed = trials_of(tmp_path)
    assert sum(t.state in FINISHED for t in resumed) == trials
    assert not [t for t in resumed if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in interrupted:
        rerun = [t for t in resumed if t.system_attrs.get("failed_trial") == trial.number]
        assert len(rerun) == 1 and rerun[0].state in FINISHED
        assert rerun[0].user_attrs["spec"] == trial.user_attrs["spec"]
        assert "fail_reason" not in rerun[0].user_attrs
    assert_no_candidate_trained_twice(resumed)
    print(f"{sent_signal} stopped {workers} worker(s) in {stop_seconds:.1f} s")


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def in_process_config(folder: Path, trials: int) -> SearchConfig:
    return SearchConfig(
        study=STUDY,
        budget=8000,
        epochs=1,
        trials=trials,
        storage=f"sqlite:///{folder}/s.db",
        artifacts=str(folder / "artifacts"),
        data_dir=DATA,
        device="cpu",
        train_subset=512,
        val_size=200,
        pruner="none",
        epoch_lines=False,
    )


def reference_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sampled trial trains ref7676 (under the budget), so each one really trains."""
    monkeypatch.setattr(
        search.study.objective, "sample_architecture", lambda trial, budget, *caps: ZOO["ref7676"]
    )


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_a_diverging_loss_prunes_that_trial_with_the_reason_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference_net(monkeypatch)

    calls = []

    def recipe(epochs: int) -> Recipe:
        calls.append(epochs)
        lr = 1e8 if len(calls) == 1 else 0.1  # SGD at lr 1e8 overflows within steps
        return Recipe(epochs=epochs, lr=lr)

    # The first training (trial 0's, with pruner "none" the only one it has) diverges.
    monkeypatch.setattr(search.study.objective, "search_recipe", recipe)
    study = run_search(in_process_config(tmp_path, trials=2))

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]  # 2 finished
    reason = trials[0].user_attrs["pruned_reason"]
    assert reason.startswith("non-finite loss") and "lr 100000000.0" in reason
    assert "weights" not in trials[0].user_attrs
    assert all(weights_file(tmp_path, t).is_file() for t in trials[1:])


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_cuda_out_of_memory_fails_that_trial_with_the_reason_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_net(monkeypatch)
    real_train = search.study.objective.train
    calls = []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(search.study.objective, "train", train)
    study = run_search(in_process_config(tmp_path, trials=2))

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "CUDA out of memory" in trials[0].user_attrs["fail_reason"]
    assert "CUDA out of memory" in capsys.readouterr().out  # the progress line says why
    assert all(weights_file(tmp_path, t).is_file() for t in trials[1:])


@needs_data
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 42949672960 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError(),
    ],
    ids=["torch allocator", "MemoryError"],
)
def test_cpu_out_of_memory_fails_that_trial_with_the_reason_and_the_study_goes_on(
    error: BaseException,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference_net(monkeypatch)
    real_train = search.study.objective.train
    calls = []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real_train(*args, **kwargs)

    monkeypatch.setattr(search.study.objective, "train", train)
    study = run_search(in_process_config(tmp_path, trials=2))

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("out of memory (CPU): ")
    if isinstance(error, RuntimeError):
        assert "you tried to allocate 42949672960 bytes" in reason
    assert "out of memory (CPU)" in capsys.readouterr().out  # the progress line says why
    assert all(weights_file(tmp_path, t).is_file() for t in trials[1:])
    assert all(t.user_attrs["precision"] == "fp32" for t in trials)  # recorded, like "device"


def test_a_stop_signal_during_optunas_tell_lets_it_finish_then_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal that lands while Optuna stores a trial's result must not cut that write
    short (raised there, Optuna turns it into an UnboundLocalError): the trial completes
    and the stop is raised once ``study.optimize`` returns."""
    monkeypatch.setattr(search.study.signals, "_stopped_by", None)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    search.study.signals.handle_stop_signals()
    study = optuna.create_study()
    tell = study._storage.set_trial_state_values

    def tell_with_a_signal(*args: object, **kwargs: object) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        return tell(*args, **kwargs)

    monkeypatch.setattr(study._storage, "set_trial_state_values", tell_with_a_signal)
    try:
        with (
            pytest.raises(search.study.signals.Terminated),
            search.study.signals.stop_signals_held(),
        ):
            study.optimize(lambda trial: 1.0, n_trials=1)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        sys.unraisablehook = sys.__unraisablehook__
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
