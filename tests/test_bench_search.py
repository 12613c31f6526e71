"""The search benchmark on real MNIST, tiny: both arms run side by side into one SQLite
file and the page of best validation accuracy against time is written."""

import re

import optuna
from real_mnist import DATA, needs_data

from search.bench.arms import ARMS, STARTED, run_bench_search
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
