"""The search benchmark on real MNIST, tiny: both arms run side by side into one SQLite
file and the page of best validation accuracy against time is written."""

import re

import optuna
import pytest
from real_mnist import DATA, needs_data

from search.bench.arms import ARMS, DEFAULT_ARMS, STARTED, run_bench_search
from search.bench.verdict import run_rows, time_to
from search.errors import UsageError
from search.study.storage import open_storage


@needs_data
def test_both_arms_run_into_one_storage_and_the_figure_is_written(tmp_path, capfd):
    summaries = run_bench_search(
        tmp_path, minutes=0.3, budget=8000, epochs=1, target=10, data_dir=DATA, train_subset=500
    )
    assert set(summaries) == set(DEFAULT_ARMS)
    storage = open_storage(f"sqlite:///{tmp_path / 'bench_search.db'}", heartbeat_interval=None)
    for arm in DEFAULT_ARMS:
        study = optuna.load_study(study_name=summaries[arm]["study"], storage=storage)
        assert study.user_attrs["settings"]["pruner"] == ARMS[arm][0]
        assert study.user_attrs["settings"]["transfer"] is False
        assert STARTED in study.user_attrs
        assert summaries[arm]["trials"] >= 1
        assert summaries[arm]["best_so_far"] == sorted(summaries[arm]["best_so_far"])
    page = (tmp_path / "bench_search.html").read_text()
    assert "Best full-cap validation accuracy against wall time" in page
    printed = capfd.readouterr().out
    assert "first >= 10" in printed
    for arm in DEFAULT_ARMS:  # the arms' interleaved progress lines say whose they are
        assert re.search(rf"^\[{arm}\] +trial +0", printed, re.MULTILINE)

    # The verdict reads the same run back: one row per arm, its times within the run's.
    rows = {row["arm"]: row for row in run_rows(tmp_path, minutes=0.3, target=10)}
    assert set(rows) == set(DEFAULT_ARMS)
    for arm, row in rows.items():
        assert row["best"] == summaries[arm]["best"]
        reached = row["to_baseline_best"]
        assert reached is None or 0 <= reached <= summaries[arm]["seconds"][-1]


@needs_data
def test_the_transfer_arm_first_trains_the_shipped_models(tmp_path):
    summaries = run_bench_search(
        tmp_path,
        minutes=0.3,
        budget=8000,
        epochs=1,
        target=10,
        data_dir=DATA,
        train_subset=500,
        arms=("transfer", "conventional"),
    )
    assert set(summaries) == {"transfer", "conventional"}
    storage = open_storage(f"sqlite:///{tmp_path / 'bench_search.db'}", heartbeat_interval=None)
    study = optuna.load_study(study_name=summaries["transfer"]["study"], storage=storage)
    first = study.trials[0]
    assert first.user_attrs["origin"].startswith("shipped model")
    conventional = optuna.load_study(study_name=summaries["conventional"]["study"], storage=storage)
    assert not any("shipped" in t.user_attrs.get("origin", "") for t in conventional.trials)
    # A run without the conventional arm has no final best to time the others to.
    rows = {row["arm"] for row in run_rows(tmp_path, minutes=0.3, target=10)}
    assert rows == {"transfer", "conventional"}


@pytest.mark.parametrize("arms", [(), ("budgetnas", "budgetnas"), ("budgetnas", "random")])
def test_bad_arms_are_refused_before_anything_runs(tmp_path, arms):
    with pytest.raises(UsageError, match="--arms takes distinct names"):
        run_bench_search(tmp_path, minutes=0.3, arms=arms)
    assert not any(tmp_path.iterdir())


def test_time_to_is_the_first_time_the_best_so_far_reaches_it():
    summary = {"seconds": [10.0, 20.0, 30.0], "best_so_far": [98.0, 99.1, 99.3]}
    assert time_to(summary, 99.0) == 20.0
    assert time_to(summary, 99.3) == 30.0
    assert time_to(summary, 99.4) is None
