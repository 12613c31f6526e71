"""The Python API (search.api) and the example notebook, which is executed top to bottom."""

import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial
from real_mnist import needs_data

from search import api as budgetnas
from search.study.confirm import CONFIRMATIONS, Confirmation

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
# Put in after the notebook's "parameters" cell: a smaller search than the notebook's own
# (1 epoch on 4,000 images, 2 trials), and a target any trained net clears, so that the
# confirmation selects one and the export, import and classification cells run.
SMALLER = """\
EPOCHS, TRIALS = 1, 2
TRAIN_SUBSET, VAL_SIZE = 4000, 1000
TARGET = 20.0
"""


def _study_with_trials() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["validation accuracy %"])  # as budgetnas names it
    spec = {"blocks": [], "head": {}}  # a dict attribute: left out unless full=True
    common = {"params": {"depth1": 2}, "distributions": {"depth1": IntDistribution(1, 3)}}
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=98.5,
            user_attrs={
                "params": 7_676,
                "macs": 1_136_688,
                "receptive_field": 20,
                "epoch_seconds": 6.8,
                "train_seconds": 103.0,
                "zoo": "ref7676",
                "spec": spec,
            },
            **common,
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            value=31.5,  # Optuna stores a pruned trial's last intermediate value as its value
            intermediate_values={1: 31.5},
            user_attrs={
                "params": 7_142,
                "macs": 786_561,
                "pruned_reason": "not promoted past 1-epoch rung at 31.50%",
                "spec": spec,
            },
            **common,
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            user_attrs={"params": 9_001, "pruned_reason": "9,001 parameters > budget 8,000"},
            **common,
        )
    )
    confirmation = Confirmation(
        trial=0,
        params=7_676,
        val_accuracy=98.5,
        epochs=2,
        seeds=[0, 1],
        test_accuracy=[98.0, 99.0],
        seconds=12.0,
        weights="artifact-id",
        weights_seed=0,
        target=95.0,
    )
    study.set_user_attr(CONFIRMATIONS, {"0": asdict(confirmation)})
    return study


def test_trials_is_a_dataframe_of_the_useful_figures():
    frame = budgetnas.trials(_study_with_trials())
    assert list(frame.columns) == list(budgetnas.TRIAL_COLUMNS)
    assert list(frame.index) == [0, 1, 2] and frame.index.name == "number"
    assert list(frame["state"]) == ["COMPLETE", "PRUNED", "PRUNED"]
    assert frame.loc[0, "val_accuracy"] == 98.5
    assert frame.loc[1, "val_accuracy"] == 31.5  # a pruned trial's last reported value
    assert frame.loc[0, "params"] == 7_676 and frame.loc[1, "macs"] == 786_561
    assert frame.loc[0, "epoch_seconds"] == 6.8 and frame.loc[0, "zoo"] == "ref7676"
    assert frame.loc[0, "test_mean"] == 98.5 and frame.loc[0, "test_min"] == 98.0
    assert list(frame["selected"]) == [True, False, False]
    assert "> budget" in frame.loc[2, "pruned_reason"]
    assert frame["fail_reason"].isna().all()  # a column even when no trial failed
    ranked = frame.sort_values("val_accuracy", ascending=False)
    assert list(ranked.index[:2]) == [0, 1]


def test_trials_full_keeps_every_attribute_and_an_empty_study_has_the_columns():
    frame = budgetnas.trials(_study_with_trials(), full=True)
    assert list(frame.columns[: len(budgetnas.TRIAL_COLUMNS)]) == list(budgetnas.TRIAL_COLUMNS)
    assert frame.loc[0, "spec"] == {"blocks": [], "head": {}}
    assert "params_depth1" in frame.columns  # Optuna's sampled parameters
    empty = budgetnas.trials(optuna.create_study(direction="maximize"))
    assert empty.empty and list(empty.columns) == list(budgetnas.TRIAL_COLUMNS)


def test_the_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1  # where the test below puts its smaller settings


@needs_data
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path):
    """The whole notebook in a fresh kernel, in an empty working folder: the search, the
    trials table, the export, importing the exported module and the one training."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(SMALLER))
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "transfer: queued shipped model" in text  # a new study starts from known nets
    assert "trial    0:" in text  # the per-trial progress lines
    assert "selected: trial" in text
    assert "val_accuracy" in text  # the trials DataFrame was displayed
    assert "test accuracy" in text and "recorded by the confirmation" in text
    for name in ("quickstart.db", "quickstart_net.py", "quickstart_net.pt"):
        assert (tmp_path / name).is_file(), name
    # The exported weights score on the test set what the confirmation recorded.
    line = next(line for line in text.splitlines() if line.startswith("test accuracy"))
    measured, recorded = (float(word.rstrip("%)")) for word in line.split() if "%" in word)
    assert abs(measured - recorded) < 0.01
