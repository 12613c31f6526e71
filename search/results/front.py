"""The question behind every hand-made MNIST net: how small can it be and still clear T%?

Every search answers it for its own budget; ``read_front`` answers it across searches.
It reads every study of one or several storages, keeps the architectures that were
*confirmed* (retrained with several seeds, final-epoch test accuracy: the claim, not the
validation ranking) and marks the Pareto front of parameters against mean test accuracy,
separately for each epoch cap, since a net trained for 20 epochs is not comparable to
one trained for 15. Hand-made references (modules written by ``budgetnas export`` or
``budgetnas train --save``) are read from their ``METRICS`` and shown beside the front,
never on it: the front is what the searches found.

Storages are only read: an SQLite file is opened through a read-only connection, so
neither Optuna nor anything else can migrate or otherwise alter a committed study.
"""

from __future__ import annotations

import ast
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import plotly.colors
import plotly.graph_objects as go
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.errors import UsageError
from search.results.report import FIGURE_HEIGHT, write_atomically
from search.study.confirm import confirmations
from search.study.storage import (
    SQLITE_BUSY_TIMEOUT_S,
    check_storage_url,
    open_storage,
    sqlite_path,
)

REFERENCE_KEYS = ("test_accuracy", "test_accuracy_mean", "test_accuracy_min", "epochs", "params")
REFERENCE_HINT = "pass a module written by 'budgetnas export' or 'budgetnas train --seeds 3 --save'"
TRIAL_GREY = "#cfcfcf"
# One table for the text output and the markdown: row key -> header.
COLUMNS = {
    "front": "front",
    "params": "params",
    "macs": "M MACs",
    "mean": "mean test %",
    "min": "min test %",
    "per_seed": "test % per seed",
    "study": "study",
    "trial": "trial",
    "storage": "storage",
}


@dataclass(frozen=True)
class FrontRow:
    """One confirmed architecture of a study, or one hand-made reference.

    ``epochs`` is the epoch cap it was trained to (the study's cap); ``mean`` and ``min``
    are over the final-epoch test accuracies of its seeds. A reference has no trial: its
    ``study`` is the module's name and its ``storage`` the module's path.
    """

    study: str
    storage: str
    trial: int | None
    epochs: int
    params: int
    macs: int | None
    test_accuracy: tuple[float, ...]
    seeds: tuple[int, ...]
    mean: float
    min: float
    reference: bool = False
    on_front: bool = False

    def dominates(self, other: FrontRow) -> bool:
        """Fewer-or-equal parameters and a higher-or-equal mean, one of them strictly,
        at the same epoch cap."""
        return (
            self.epochs == other.epochs
            and self.params <= other.params
            and self.mean >= other.mean
            and (self.params < other.params or self.mean > other.mean)
        )


@dataclass(frozen=True)
class TrialPoint:
    """A completed trial's validation accuracy: the search's view, drawn behind the front."""

    study: str
    storage: str
    trial: int
    epochs: int | None
    params: int
    val_accuracy: float


@dataclass(frozen=True)
class Front:
    """What ``read_front`` found: the confirmed rows of the searches, with the front
    marked, the references, and every completed trial of the studies read."""

    rows: tuple[FrontRow, ...]
    references: tuple[FrontRow, ...]
    trials: tuple[TrialPoint, ...]

    @property
    def epoch_caps(self) -> list[int]:
        return sorted({row.epochs for row in (*self.rows, *self.references)})

    def smallest(self, target: float) -> dict[int, FrontRow | None]:
        """Per epoch cap, the smallest searched net with mean >= ``target``, or None."""
        return smallest_clearing(self.rows, target, self.epoch_caps)


def mark_front(rows: Iterable[FrontRow]) -> list[FrontRow]:
    """``rows`` with ``on_front`` set: a row is on the front when no other row of the same
    epoch cap dominates it (see ``FrontRow.dominates``). Two identical rows (the same
    architecture confirmed alike in two studies) do not dominate each other, so both stay.
    """
    rows = list(rows)
    return [replace(row, on_front=not any(o.dominates(row) for o in rows)) for row in rows]


def smallest_clearing(
    rows: Iterable[FrontRow], target: float, epoch_caps: Iterable[int] = ()
) -> dict[int, FrontRow | None]:
    """Per epoch cap, the row with the fewest parameters whose mean clears ``target`` (the
    higher mean on a tie), or None where none does. Such a row is always on the front:
    a row dominating it would be smaller, or as small with a higher mean. Caps in
    ``epoch_caps`` without any row get None too."""
    rows = list(rows)
    answer: dict[int, FrontRow | None] = dict.fromkeys(
        sorted({*epoch_caps, *(row.epochs for row in rows)})
    )
    for row in rows:
        best = answer[row.epochs]
        if row.mean >= target and (
            best is None or (row.params, -row.mean) < (best.params, -best.mean)
        ):
            answer[row.epochs] = row
    return answer


def open_read_only(url: str) -> RDBStorage:
    """The storage at ``url``, which must exist, opened so that reading cannot change it.

    An SQLite file gets a read-only connection (``mode=ro``): should Optuna try to create a
    table or stamp a schema version on open, that fails with an error rather than
    altering the file. Server databases (PostgreSQL, MySQL) are opened as every command
    that only reads opens them: without a heartbeat, issuing only reads.
    """
    path = sqlite_path(url)
    if path is None:
        return open_storage(url, must_exist=True, heartbeat_interval=None)
    check_storage_url(url, must_exist=True)
    uri = f"{path.resolve().as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)

    try:
        return RDBStorage(url, engine_kwargs={"creator": connect}, skip_table_creation=True)
    except Exception as error:  # a schema this Optuna cannot read without migrating it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot read storage {url!r} without changing it: {reason}") from None


def read_storage(url: str, epochs: int | None = None) -> tuple[list[FrontRow], list[TrialPoint]]:
    """The confirmed rows and the completed trials of every study in the storage at
    ``url`` (only studies whose epoch cap is ``epochs``, when given).

    Raises UsageError when the storage holds no confirmed trial at all: a front of it
    would silently be empty, and 'budgetnas confirm' is what fills it.
    """
    storage = open_read_only(url)
    try:
        names = sorted(optuna.get_all_study_names(storage))
        rows: list[FrontRow] = []
        trials: list[TrialPoint] = []
        found = 0
        for name in names:
            study = optuna.load_study(study_name=name, storage=storage)
            confirmed = confirmations(study)
            found += len(confirmed)
            cap = study.user_attrs.get("settings", {}).get("epochs")
            for number, record in sorted(confirmed.items()):
                row_epochs = cap if cap is not None else record.epochs
                if epochs is None or row_epochs == epochs:
                    rows.append(
                        FrontRow(
                            study=name,
                            storage=url,
                            trial=number,
                            epochs=row_epochs,
                            params=record.params,
                            macs=record.macs,
                            test_accuracy=tuple(record.test_accuracy),
                            seeds=tuple(record.seeds),
                            mean=record.mean,
                            min=record.min,
                        )
                    )
            if epochs is not None and cap != epochs:
                continue
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if "params" in trial.user_attrs and trial.value is not None:
                    trials.append(
                        TrialPoint(
                            name, url, trial.number, cap, trial.user_attrs["params"], trial.value
                        )
                    )
    finally:
        storage.engine.dispose()
    if not found:
        studies = ", ".join(names) or "none"
        raise UsageError(
            f"storage {url} holds no confirmed trial (studies: {studies}); run 'budgetnas "
            "confirm STUDY' on it first, or leave it out"
        )
    return rows, trials


def read_reference(path: str | Path) -> FrontRow:
    """A hand-made (or any exported) network's figures, from the ``METRICS`` dict of the
    module that ``budgetnas export`` or ``budgetnas train --save`` wrote.

    The file is parsed, not imported: ``METRICS`` is a literal, read with
    ``ast.literal_eval``, so no code of the file runs and a module whose imports are
    missing here (its weights, torch, your source beside it) still reads.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--references {path}: no such file; {REFERENCE_HINT}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError) as error:
        reason = getattr(error, "msg", None) or getattr(error, "strerror", None) or error
        raise UsageError(
            f"--references {path} is not a readable Python module ({reason})"
        ) from None
    value = None
    for node in tree.body:  # the last assignment wins, as when the module runs
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "METRICS" for target in node.targets
        ):
            value = node.value
        elif isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "METRICS":
            value = node.value
    if value is None:
        raise UsageError(f"--references {path} has no METRICS dict; {REFERENCE_HINT}")
    try:
        metrics = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise UsageError(
            f"--references {path}: METRICS is not a literal dict; {REFERENCE_HINT}"
        ) from None
    if not isinstance(metrics, dict):
        raise UsageError(f"--references {path}: METRICS is not a dict; {REFERENCE_HINT}")
    missing = [key for key in REFERENCE_KEYS if metrics.get(key) is None]
    if missing:
        raise UsageError(
            f"--references {path}: METRICS lacks {', '.join(missing)}; {REFERENCE_HINT}"
        )
    accuracies = metrics["test_accuracy"]
    if not isinstance(accuracies, list | tuple):
        accuracies = [accuracies]
    try:
        return FrontRow(
            study=path.stem,
            storage=str(path),
            trial=None,
            epochs=int(metrics["epochs"]),
            params=int(metrics["params"]),
            macs=None if metrics.get("macs") is None else int(metrics["macs"]),
            test_accuracy=tuple(float(a) for a in accuracies),
            seeds=tuple(int(s) for s in metrics.get("seeds") or range(len(accuracies))),
            mean=float(metrics["test_accuracy_mean"]),
            min=float(metrics["test_accuracy_min"]),
            reference=True,
        )
    except (TypeError, ValueError):
        raise UsageError(
            f"--references {path}: METRICS holds a figure that is not a number; {REFERENCE_HINT}"
        ) from None


def read_front(
    storages: Sequence[str], references: Sequence[str | Path] = (), epochs: int | None = None
) -> Front:
    """Every confirmed architecture of every study in ``storages`` (SQLite files or
    database URLs, each read-only), with the Pareto front of parameters against mean
    test accuracy marked per epoch cap; ``references`` are modules whose ``METRICS``
    give hand-made nets to compare with, kept apart from the front. ``epochs`` keeps one
    epoch cap.

    All input is read and checked before anything is returned, so a bad storage or
    reference raises a one-line UsageError and the caller writes nothing.
    """
    if not storages:
        raise UsageError("no storage to read; pass at least one storage URL")
    # The references first: a bad one is found in a moment, before any storage is read.
    refs = [read_reference(path) for path in dict.fromkeys(references)]
    refs = [ref for ref in refs if epochs is None or ref.epochs == epochs]
    rows: list[FrontRow] = []
    trials: list[TrialPoint] = []
    for url in dict.fromkeys(storages):  # a storage named twice is read once
        found, points = read_storage(url, epochs)
        rows += found
        trials += points
    if epochs is not None and not rows:
        raise UsageError(
            f"no confirmed architecture trained to {epochs} epochs in {', '.join(storages)}; "
            "drop --epochs to see the epoch caps there are"
        )
    order = lambda row: (row.epochs, row.params, -row.mean, row.study, row.storage, row.trial or 0)  # noqa: E731
    return Front(
        rows=tuple(sorted(mark_front(rows), key=order)),
        references=tuple(sorted(refs, key=order)),
        trials=tuple(trials),
    )


def row_cells(row: FrontRow, markdown: bool = False) -> dict[str, str]:
    """A row as the text table and the markdown table show it (keys of ``COLUMNS``)."""
    storage = row.storage
    if markdown:
        path = sqlite_path(storage)
        storage = f"`{path if path is not None else storage}`"
    return {
        "epochs": str(row.epochs),
        "front": "reference"
        if row.reference
        else ("yes" if markdown else "*")
        if row.on_front
        else "",
        "params": f"{row.params:,}",
        "macs": "-" if row.macs is None else f"{row.macs / 1e6:.2f}",
        "mean": f"{row.mean:.2f}",
        "min": f"{row.min:.2f}",
        "per_seed": " / ".join(f"{a:.2f}" for a in row.test_accuracy),
        "study": f"`{row.study}`" if markdown else row.study,
        "trial": "-" if row.trial is None else str(row.trial),
        "storage": storage,
    }


def section_rows(front: Front, epochs: int) -> list[FrontRow]:
    """The searched rows and the references of one epoch cap, smallest first."""
    rows = [row for row in (*front.rows, *front.references) if row.epochs == epochs]
    return sorted(rows, key=lambda row: (row.params, row.reference, -row.mean))


def target_lines(front: Front, target: float, markdown: bool = False) -> list[str]:
    """One line per epoch cap: the smallest searched net with mean >= ``target``, or none."""
    lines = []
    for epochs, row in front.smallest(target).items():
        searched = [r for r in front.rows if r.epochs == epochs]
        if row is not None:
            cells = row_cells(row, markdown)
            lines.append(
                f"{epochs} epochs: {cells['params']} params, trial {row.trial} of {cells['study']} "
                f"in {cells['storage']} (mean {cells['mean']}%, min {cells['min']}%)"
            )
        elif searched:
            best = max(searched, key=lambda r: (r.mean, -r.params))
            lines.append(
                f"{epochs} epochs: none of the {len(searched)} confirmed nets (best mean "
                f"{best.mean:.2f}%, {best.params:,} params)"
            )
        else:
            lines.append(f"{epochs} epochs: no confirmed net (references only)")
    return lines


def front_markdown(front: Front, target: float | None = None) -> str:
    """The rows as one markdown table (an epochs column first), front rows marked,
    references marked as such; then, with ``target``, the smallest net per epoch cap."""
    headers = {"epochs": "epochs", **COLUMNS}
    cells = [
        row_cells(row, markdown=True)
        for epochs in front.epoch_caps
        for row in section_rows(front, epochs)
    ]
    right = {"epochs", "params", "macs", "mean", "min", "trial"}
    lines = [
        "| " + " | ".join(headers.values()) + " |",
        "|" + "|".join("---:" if key in right else "---" for key in headers) + "|",
    ]
    lines += ["| " + " | ".join(row[key] for key in headers) + " |" for row in cells]
    if target is not None:
        lines += ["", f"The smallest net with mean >= {target}%, per epoch cap:"]
        lines += [f"- {line}" for line in target_lines(front, target, markdown=True)]
    return "\n".join(lines)


def front_figure(front: Front, target: float | None = None) -> go.Figure:
    """Mean test accuracy against parameters (log axis), error bars down to the min: the
    confirmed nets of each epoch cap with their front as a line, the references as
    diamonds, and every completed trial's validation accuracy in light grey behind."""
    figure = go.Figure()
    if front.trials:
        figure.add_scatter(
            name="every completed trial: validation accuracy",
            mode="markers",
            x=[t.params for t in front.trials],
            y=[t.val_accuracy for t in front.trials],
            customdata=[[t.study, t.trial, t.storage] for t in front.trials],
            hovertemplate="%{customdata[0]} trial %{customdata[1]}: %{x:,} params, "
            "val %{y:.2f}% (%{customdata[2]})<extra></extra>",
            marker={"color": TRIAL_GREY, "size": 6},
        )
    palette = plotly.colors.qualitative.Plotly
    for index, epochs in enumerate(sorted({row.epochs for row in front.rows})):
        colour = palette[index % len(palette)]
        rows = [row for row in front.rows if row.epochs == epochs]
        figure.add_scatter(
            name=f"confirmed, {epochs} epochs: test mean (bar: down to the min)",
            mode="markers",
            **_confirmed_points(rows),
            marker={
                "color": colour,
                "size": 11,
                "symbol": ["circle" if row.on_front else "circle-open" for row in rows],
            },
        )
        on_front = [row for row in rows if row.on_front]
        figure.add_scatter(
            name=f"front, {epochs} epochs",
            mode="lines",
            # A step: between two front points only the smaller one's accuracy is attained.
            line={"shape": "hv", "color": colour},
            x=[row.params for row in on_front],
            y=[row.mean for row in on_front],
            hoverinfo="skip",
        )
    if front.references:
        figure.add_scatter(
            name="reference (hand-made): test mean (bar: down to the min)",
            mode="markers",
            **_confirmed_points(list(front.references)),
            marker={"color": "#222222", "size": 12, "symbol": "diamond"},
        )
    if target is not None:
        figure.add_hline(
            y=target,
            line_dash="dot",
            annotation_text=f"target {target}%",
            annotation_position="top left",
        )
    figure.update_layout(
        title="How small can it be: confirmed nets, parameters against mean test accuracy",
        xaxis={"title": "parameters", "type": "log"},
        yaxis_title="accuracy (%): test mean for confirmed nets, validation for trials",
        legend={"orientation": "h", "yanchor": "top", "y": -0.15},
    )
    return figure


def _confirmed_points(rows: list[FrontRow]) -> dict:
    return {
        "x": [row.params for row in rows],
        "y": [row.mean for row in rows],
        # The bar reaches the worst seed: the floor matters as much as the mean.
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": [0.0] * len(rows),
            "arrayminus": [row.mean - row.min for row in rows],
        },
        "customdata": [
            [
                row.study,
                "-" if row.trial is None else row.trial,
                row.epochs,
                len(row.seeds),
                row.min,
            ]
            for row in rows
        ],
        "hovertemplate": "%{customdata[0]} trial %{customdata[1]}: %{x:,} params, "
        "%{customdata[2]} epochs, TEST mean %{y:.2f}% over %{customdata[3]} seeds "
        "(min %{customdata[4]:.2f}%)<extra></extra>",
    }


def write_front_html(front: Front, out: str | Path, target: float | None = None) -> Path:
    """Write ``front_figure`` to ``out`` as one self-contained HTML page (plotly.js
    inlined), through a temporary file moved into place; missing folders are created,
    as ``budgetnas report`` does. Returns the path."""
    path = Path(out)
    page = front_figure(front, target).to_html(
        full_html=True, include_plotlyjs=True, div_id="front", default_height=FIGURE_HEIGHT
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot write {path}: {error.strerror or error}; pass another --html"
        ) from None
    write_atomically(path, page, option="--html")
    return path
