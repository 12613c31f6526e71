"""Several workers on one study: exactly --trials finished, none duplicated, none lost.

The race tests run real processes on a real SQLite file with training replaced by an
instant stand-in, so that trials end within milliseconds of each other and the claim on
the last slots is contested as hard as it can be. The PostgreSQL test runs the real CLI
on real MNIST: ``budgetnas search --workers 2`` plus one ``budgetnas worker`` joining it,
as a second machine would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState
from real_mnist import needs_data

import search.study.objective
import search.study.run
from search.engine.data import Split
from search.engine.train import TrainResult
from search.study.config import FINISHED, SearchConfig
from search.study.objective import _claim_slot
from search.study.run import create_or_resume, run_worker, threads_per_worker
from search.study.storage import open_storage
from space import build


def config_for(folder: Path, trials: int, storage: str | None = None, **kwargs) -> SearchConfig:
    return SearchConfig(
        study="workers",
        budget=8000,
        epochs=1,
        trials=trials,
        storage=storage or f"sqlite:///{folder}/s.db",
        artifacts=str(folder / "artifacts"),
        device="cpu",
        pruner="none",
        epoch_lines=False,
        **kwargs,
    )


def no_data(*args, **kwargs) -> tuple[Split, Split]:
    empty = Split(torch.empty(0, 28, 28, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    return empty, empty


def instant_train(model: torch.nn.Module, *args, **kwargs) -> TrainResult:
    """Stands in for training: the untrained weights, at once, with a made-up accuracy."""
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    return TrainResult([], 50.0, 0.0, "cpu", state)


def check_finished_trials(study: optuna.Study, trials: int, artifacts: Path) -> list[FrozenTrial]:
    """Exactly ``trials`` finished, none left running, no candidate run twice, and every
    COMPLETE trial has its spec and loadable weights in the artifact store."""
    all_trials = study.get_trials()
    finished = [t for t in all_trials if t.state in FINISHED]
    assert len(finished) == trials, Counter(t.state.name for t in all_trials)
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in all_trials}) == len(all_trials)
    candidates = [
        json.dumps([t.params, t.user_attrs.get("spec")], sort_keys=True)
        for t in finished
        if "zoo" not in t.user_attrs  # enqueued reference nets may repeat by design
    ]
    assert len(set(candidates)) == len(candidates), "a candidate was trained twice"
    for trial in finished:
        if trial.state == TrialState.COMPLETE:
            weights = artifacts / trial.user_attrs["weights"]
            model = build(trial.user_attrs["spec"])
            model.load_state_dict(torch.load(weights, weights_only=True))
    return all_trials


def test_local_workers_split_the_cores_between_them() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores) == 1
    assert threads_per_worker(cores * 3) == 1  # never zero threads


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_only_the_lowest_numbered_trials_claim_the_last_slots(tmp_path: Path) -> None:
    study = create_or_resume(config_for(tmp_path, trials=4))
    for value in (1.0, 2.0):
        study.add_trial(optuna.create_trial(value=value))
    racing = [study.ask() for _ in range(3)]  # three workers asked at once; 2 slots left
    assert [_claim_slot(trial, 4) for trial in racing] == [True, True, False]
    study.tell(racing[0], state=TrialState.FAIL)  # a claimed trial fails (say, CUDA OOM)...
    assert _claim_slot(racing[2], 4)  # ...and its slot is free again


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_worker_waits_for_running_trials_that_may_fail_and_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last slot is held by another worker's trial, which then fails: this worker must
    not leave while it runs, or the study would end one trial short."""
    monkeypatch.setattr(search.study.run, "search_data", no_data)
    monkeypatch.setattr(search.study.objective, "train", instant_train)
    config = config_for(tmp_path, trials=2)
    study = create_or_resume(config)
    study.add_trial(optuna.create_trial(value=1.0))
    held = study.ask()  # another worker's trial, running
    failer = threading.Timer(1.5, lambda: study.tell(held, state=TrialState.FAIL))
    failer.start()
    started = time.monotonic()
    try:
        run_worker(config)
    finally:
        failer.cancel()
    assert time.monotonic() - started >= 1.5
    trials = study.get_trials()
    assert [t.state for t in trials][:2] == [TrialState.COMPLETE, TrialState.FAIL]
    assert sum(t.state in FINISHED for t in trials) == 2


def _racing_worker(config: SearchConfig, worker: int, report: Path) -> None:
    """A spawned worker with instant training and a slow look at the study, as over a
    distant database: between counting the finished trials and asking for a new one the
    others move on, so several workers go for the last slots at once. Reports the threads
    it trained with."""
    count = search.study.run.finished_count

    def slow_count(study: optuna.Study) -> int:
        finished = count(study)
        time.sleep(random.uniform(0.0, 0.2))
        return finished

    search.study.run.search_data = no_data
    search.study.objective.train = instant_train
    search.study.run.finished_count = slow_count
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(config, worker)
    report.write_text(str(torch.get_num_threads()))


def test_exactly_n_trials_finish_under_three_racing_worker_processes(tmp_path: Path) -> None:
    trials = 15
    config = config_for(tmp_path, trials=trials, workers=3)
    create_or_resume(config)
    context = multiprocessing.get_context("spawn")
    reports = [tmp_path / f"worker{index}.txt" for index in range(3)]
    workers = [
        context.Process(target=_racing_worker, args=(config, index, reports[index]))
        for index in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert [int(r.read_text()) for r in reports] == [threads_per_worker(3)] * 3

    study = optuna.load_study(
        study_name=config.study_name, storage=open_storage(config.storage, heartbeat_interval=None)
    )
    all_trials = check_finished_trials(study, trials, tmp_path / "artifacts")
    ran_in = Counter(t.user_attrs.get("worker") for t in all_trials if "worker" in t.user_attrs)
    surplus = sum(t.state == TrialState.FAIL for t in all_trials)
    print(f"{trials} finished, {surplus} surplus trials failed; trained per process: {ran_in}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards whatever happens."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({error})")
    admin.autocommit = True
    name = f"budgetnas_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:  # FORCE: a killed worker may still hold a connection
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def budgetnas() -> list[str]:
    script = shutil.which("budgetnas")
    return [script] if script else [sys.executable, "-m", "search.cli"]


@needs_data
def test_search_workers_and_a_joining_worker_share_a_postgres_study(
    tmp_path: Path, postgres_url: str
) -> None:
    trials = 6
    artifacts = tmp_path / "artifacts"
    common = ["--storage", postgres_url, "--artifacts", str(artifacts), "--device", "cpu"]
    search_args = [
        "search", "--study", "pg", "--budget", "8000", "--epochs", "2",
        "--trials", str(trials), "--workers", "2", "--pruner", "none",
        "--train-subset", "1500", "--val-size", "500", "--no-confirm", "--no-transfer", *common,
    ]  # fmt: skip
    config = SearchConfig(
        study="pg", budget=8000, epochs=2, trials=trials, train_subset=1500, val_size=500,
        storage=postgres_url,
    )  # fmt: skip
    create_or_resume(config)  # so that the joining worker finds the study from the start
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    processes = [
        subprocess.Popen(budgetnas() + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for args in (search_args, ["worker", "pg", "--pruner", "none", *common])
    ]  # fmt: skip
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    seconds = time.monotonic() - started
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        assert "Traceback" not in output

    study = optuna.load_study(
        study_name="pg", storage=open_storage(postgres_url, heartbeat_interval=None)
    )
    all_trials = check_finished_trials(study, trials, artifacts)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    assert complete and all("spec" in t.user_attrs for t in complete)
    ran_in = Counter(t.user_attrs["worker"] for t in all_trials if "worker" in t.user_attrs)
    assert len(ran_in) >= 2, f"one process trained everything: {ran_in}\n{outputs}"
    states = Counter(t.state.name for t in all_trials)
    print(f"{dict(states)} in {seconds:.1f} s; trained per process: {dict(ran_in)}")
