"""A trial as a standalone module with its weights: what ``budgetnas export`` writes,
and the one-line errors of every command that writes an export."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact

from search.errors import UsageError
from search.results.tables import find_trial, trial_origin
from space import export_module


def export_trial(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    out: str | Path,
    *,
    number: int | None = None,
    force: bool = False,
) -> Path:
    """Write a trial as a standalone module with its weights and measured figures.

    A confirmed trial ships the weights of its median confirmation seed and its test
    figures; an unconfirmed one ships its search weights and validation accuracy only.
    """
    trial, confirmation = find_trial(study, number)
    settings = study.user_attrs.get("settings", {})
    budget = settings.get("budget")
    if confirmation:
        artifact, metrics = confirmation.weights, confirmation.metrics(budget)
        origin = (
            f"Trial {trial.number} of study {study.study_name!r}, retrained on the full training set "
            f"with seeds {confirmation.seeds}; weights of seed {confirmation.weights_seed}, the median "
            "seed: representative of the architecture, not its luckiest run."
        )
    else:
        artifact = trial.user_attrs["weights"]
        metrics = {
            "val_accuracy": trial.value,
            "epochs": len(trial.user_attrs.get("curve", [])),
            "budget": budget,
            "params": trial.user_attrs["params"],
            "macs": trial.user_attrs.get("macs"),
            "train_subset": settings.get("train_subset"),
        }
        origin = f"Trial {trial.number} of study {study.study_name!r}: search weights, not confirmed on the test set."
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        try:
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact)
        except Exception as error:
            raise UsageError(
                f"weights of trial {trial.number} are missing from the artifact store ({error}); pass --artifacts"
            ) from None
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    metrics = {
        "study": study.study_name,
        "trial": trial.number,
        "origin": trial_origin(trial),
        **metrics,
    }
    return write_export(
        trial.user_attrs["spec"],
        out,
        "--out",
        state_dict=state_dict,
        metrics=metrics,
        origin=origin,
        force=force,
    )


def write_export(spec: dict, out: str | Path, option: str, **export_args) -> Path:
    """``space.export_module`` with its failures as one-line UsageErrors naming ``option``
    (the CLI flag that chose ``out``), for every command that writes an export."""
    try:
        return export_module(spec, out, **export_args)
    except ValueError as error:
        raise UsageError(f"{error}; pass {option} PATH.py with an importable module name") from None
    except OSError as error:
        if error.errno is None:  # export_module's own refusal of an existing target
            raise UsageError(str(error)) from None
        # Includes an OS-level FileExistsError, e.g. a file where a folder of the path should be.
        raise UsageError(
            f"cannot write {out}: {error.strerror or error}; pass another {option}"
        ) from None
