"""The search benchmark on real MNIST, tiny: both arms run side by side into one SQLite
file and the page of best validation accuracy against time is written."""

import re

import optuna
from real_mnist import DATA, needs_data

from search.bench.arms import ARMS, STARTED, run_bench_search
from search.bench.verdict import run_rows, time_to
from search.study.storage import open_storage


@needs_data
def test_both_arms_run_into_one_storage_and_the_figure_is_written(tmp_path, capfd):
    summaries = run_bench_search(
        tmp_path, minutes=0.3, budget=8000, epochs=1, target=10, data_dir=DATA, train_subset=500
    )
    assert set(summaries) == set(ARMS)
    storage = open_storage(f"sqlite:///{tmp_path / 'bench_search.db'}", heartbeat_interval=None)
    for arm, pruner in ARMS.items():
        study = optuna.load_study(study_name=summaries[arm]["study"], storage=storage)
        assert study.user_attrs["settings"]["pruner"] == pruner
        assert STARTED in study.user_attrs
        assert summaries[arm]["trials"] >= 1
        assert summaries[arm]["best_so_far"] == sorted(summaries[arm]["best_so_far"])
    page = (tmp_path / "bench_search.html").read_text()
    assert "Best full-cap validation accuracy against wall time" in page
    printed = capfd.readouterr().out
    assert "first >= 10" in printed
    for arm in ARMS:  # the arms' interleaved progress lines say whose they are
        assert re.search(rf"^\[{arm}\] +trial +0", printed, re.MULTILINE)

    # The verdict reads the same run back: one row per arm, its times within the run's.
    rows = {row["arm"]: row for row in run_rows(tmp_path, minutes=0.3, target=10)}
    assert set(rows) == set(ARMS)
    for arm, row in rows.items():
        assert row["best"] == summaries[arm]["best"]
        reached = row["to_baseline_best"]
        assert reached is None or 0 <= reached <= summaries[arm]["seconds"][-1]


def test_time_to_is_the_first_time_the_best_so_far_reaches_it():
    summary = {"seconds": [10.0, 20.0, 30.0], "best_so_far": [98.0, 99.1, 99.3]}
    assert time_to(summary, 99.0) == 20.0
    assert time_to(summary, 99.3) == 30.0
    assert time_to(summary, 99.4) is None
