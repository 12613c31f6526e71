"""The HTML report: built from a real SQLite study whose trials are added directly, so the
tests cover every kind of trial a search leaves behind without training anything."""

import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from search.errors import UsageError
from search.results.report import accuracy_figure, importance_figure, pareto_front, write_report

SETTINGS = {
    "budget": 8000,
    "epochs": 3,
    "target": 99.4,
    "val_size": 10000,
    "train_subset": None,
    "seed": 0,
}
DISTRIBUTIONS = {
    "width1": IntDistribution(4, 25),
    "lr_scale": FloatDistribution(0.25, 4.0, log=True),
    "optimizer": CategoricalDistribution(["sgd", "adamw"]),
}


def trained(
    state: TrialState, params: int, curve: list[float], value: float | None = None, **sampled
) -> optuna.trial.FrozenTrial:
    """A trial that trained for ``len(curve)`` epochs, as the search records it."""
    return create_trial(
        state=state,
        value=value,
        params=sampled,
        distributions={name: DISTRIBUTIONS[name] for name in sampled},
        intermediate_values={epoch: acc for epoch, acc in enumerate(curve, start=1)},
        user_attrs={
            "spec": {"blocks": [], "head": {"type": "gap_linear"}},
            "params": params,
            "macs": params * 100,
            "receptive_field": 20,
            "recipe": {"epochs": 3},
            "curve": [
                {"epoch": epoch, "loss": 0.1, "val_accuracy": acc, "seconds": 1.0}
                for epoch, acc in enumerate(curve, start=1)
            ],
            "train_seconds": 3.0,
            "device": "cpu",
        },
        constraints={"params_over_budget": float(params - SETTINGS["budget"])},
    )


def make_study(tmp_path: Path, name: str = "mnist-8000p-3e") -> optuna.Study:
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'studies.db'}", direction="maximize"
    )
    study.set_user_attr("settings", SETTINGS)
    complete = [  # (params, curve, sampled parameters)
        (5200, [98.0, 98.9, 99.1], {"width1": 8, "lr_scale": 1.0, "optimizer": "sgd"}),
        (7400, [98.5, 99.2, 99.45], {"width1": 14, "lr_scale": 2.0, "optimizer": "adamw"}),
        (7900, [98.1, 98.8, 99.3], {"width1": 16, "lr_scale": 0.5, "optimizer": "sgd"}),
        (6100, [98.2, 99.0, 99.35], {"width1": 11, "lr_scale": 3.0, "optimizer": "adamw"}),
    ]
    for params, curve, sampled in complete:
        study.add_trial(trained(TrialState.COMPLETE, params, curve, curve[-1], **sampled))
    over = create_trial(
        state=TrialState.PRUNED,
        params={"width1": 25},
        distributions={"width1": DISTRIBUTIONS["width1"]},
        user_attrs={"params": 12000, "pruned_reason": "12,000 parameters > budget 8,000"},
        constraints={"params_over_budget": 4000.0},
    )
    study.add_trial(over)
    loser = trained(TrialState.PRUNED, 3000, [96.0, 96.7], width1=5, lr_scale=0.3)
    study.add_trial(loser)
    record = {
        "params": 7400,
        "val_accuracy": 99.45,
        "epochs": 3,
        "seeds": [0, 1, 2],
        "seconds": 9.0,
        "weights": "0000",
        "weights_seed": 1,
        "target": 99.4,
        "train_subset": None,
    }
    study.set_user_attr(
        "confirmations",
        {
            "1": {**record, "trial": 1, "test_accuracy": [99.41, 99.46, 99.5]},
            "3": {
                **record,
                "trial": 3,
                "params": 6100,
                "val_accuracy": 99.35,
                "test_accuracy": [99.2, 99.3, 99.25],
            },
        },
    )
    return study


def test_report_has_every_section_in_one_offline_file(tmp_path):
    study = make_study(tmp_path)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    assert write_report(study, out) == out
    page = out.read_text(encoding="utf-8")

    assert "Study mnist-8000p-3e" in page
    for title in (
        "Accuracy against parameters",
        "Optimization history",
        "Parameter importances",
        "Validation accuracy per epoch of the full training (top 4 trials)",
        "Pareto front",
        "budget 8,000 params",
        "target 99.4%",
        "confirmed: test mean over seeds",
        "M MACs",
        "Confirmed on the test set",
        "winner",
    ):
        assert title in page, title
    assert page.count("Plotly.newPlot") == 4
    # plotly.js is inlined exactly once and nothing is loaded from elsewhere.
    assert page.count(get_plotlyjs()[:2000]) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert list(out.parent.iterdir()) == [out]


def test_report_replaces_an_older_one(tmp_path):
    study = make_study(tmp_path)
    out = tmp_path / "report.html"
    out.write_text("old")
    write_report(study, out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "studies.db"]


def test_accuracy_plot_shows_trials_that_have_an_accuracy(tmp_path):
    figure = accuracy_figure(make_study(tmp_path))
    traces = {trace.name: trace for trace in figure.data}
    complete = "trial: validation accuracy"
    stopped = "trial stopped early: last validation accuracy"
    confirmed = "confirmed: test mean over seeds (bar: min to max)"
    assert set(traces) == {complete, stopped, "Pareto front (validation)", confirmed}
    # The pruner's loser shows at its last epoch; the trial over budget never trained.
    assert list(traces[stopped].x) == [3000] and list(traces[stopped].y) == [96.7]
    assert list(traces["Pareto front (validation)"].x) == [5200, 6100, 7400]
    assert list(traces[confirmed].x) == [7400, 6100]
    # Compute is the colour of the completed trials, on a labelled scale.
    assert list(traces[complete].marker.color) == [0.52, 0.74, 0.79, 0.61]
    assert traces[complete].marker.colorbar.title.text == "M MACs / image"
    # Test means are not validation accuracies: the axis and the legend say which is which.
    assert "validation" in figure.layout.yaxis.title.text
    assert "test" in figure.layout.yaxis.title.text


def test_pareto_front_keeps_only_undominated_completed_trials(tmp_path):
    study = make_study(tmp_path)
    # A tie with trial 1 (same size, same accuracy) adds nothing to the front.
    study.add_trial(trained(TrialState.COMPLETE, 7400, [99.45], 99.45, width1=14))
    assert [t.number for t in pareto_front(study.trials)] == [0, 3, 1]


def test_importances_fall_back_to_a_note(tmp_path):
    figure, _ = importance_figure(make_study(tmp_path))
    assert {bar for trace in figure.data for bar in trace.y} == set(DISTRIBUTIONS)

    lonely = optuna.create_study(direction="maximize")
    lonely.add_trial(trained(TrialState.COMPLETE, 5000, [99.0], 99.0, width1=8))
    figure, notes = importance_figure(lonely)
    assert figure is None and "at least 2 completed trials" in notes[0]
    lonely.add_trial(trained(TrialState.COMPLETE, 5000, [99.1], 99.1, width1=8))
    figure, notes = importance_figure(lonely)
    assert figure is None and "parameters differ" in notes[0]

    out = tmp_path / "lonely.html"
    write_report(lonely, out)
    page = out.read_text(encoding="utf-8")
    assert "parameters differ" in page and page.count("Plotly.newPlot") == 3


def test_study_without_completed_trial_is_refused(tmp_path):
    study = optuna.create_study(
        study_name="empty", storage=f"sqlite:///{tmp_path / 'studies.db'}", direction="maximize"
    )
    study.add_trial(trained(TrialState.PRUNED, 3000, [96.0]))
    out = tmp_path / "report.html"
    with pytest.raises(UsageError, match="study 'empty' has no completed trial yet"):
        write_report(study, out)
    assert not out.exists()


def test_a_missing_folder_is_created_as_export_does(tmp_path):
    out = tmp_path / "reports" / "today" / "report.html"
    assert write_report(make_study(tmp_path), out) == out and out.is_file()


@pytest.mark.parametrize("where", ["under_a_file", "folder", "proc"])
def test_unwritable_path_is_refused_and_leaves_nothing(tmp_path, where):
    study = make_study(tmp_path)
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    out = {
        "under_a_file": tmp_path / "file" / "report.html",
        "folder": tmp_path / "folder",
        "proc": Path("/proc/budgetnas-report.html"),
    }[where]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="cannot write .*; pass another --out") as error:
        write_report(study, out)
    assert "\n" not in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before
    assert where == "folder" or not out.exists()
