"""A study as one self-contained HTML page: what was tried, what won, and how sure we are.

The page inlines plotly.js once, so it opens offline and can be mailed or archived as a
single file. It is written to a temporary file beside the target and moved into place,
so a reader never sees half a report and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import secrets
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.errors import UsageError
from search.results.tables import trial_counts
from search.study.confirm import confirmations, selected, top_trials

ACCURACY_AXIS = "validation accuracy (%)"
BOTH_AXIS = "accuracy (%): validation for trials, test for confirmations"
TOP_CURVES = 10
FIGURE_HEIGHT = 500  # pixels; plotly's default of "100%" depends on the container
STATE_COLOURS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#b0b0b0",
    "RUNNING": "#2ca02c",
    "FAIL": "#d62728",
    "WAITING": "#9467bd",
}
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: right; }
th { background: #f2f2f2; }
.note { color: #666; font-style: italic; }
"""


def accuracy(trial: FrozenTrial) -> float | None:
    """The trial's validation accuracy: its value, or for a trial stopped early the last
    epoch it reported, so pruned trials still show how far they got."""
    if trial.value is not None:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def pareto_front(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Completed trials that no other completed trial beats on both accuracy (higher) and
    parameters (fewer), fewest parameters first. Pruned trials never finished their
    epochs, so their accuracy is not comparable and they are left out."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "params" in t.user_attrs]
    complete.sort(key=lambda t: (t.user_attrs["params"], -t.value, t.number))
    front: list[FrozenTrial] = []
    for trial in complete:
        if not front or trial.value > front[-1].value:
            front.append(trial)
    return front


def accuracy_figure(study: optuna.Study) -> go.Figure:
    """Validation accuracy against parameter count, coloured by MACs per image, for every
    completed trial; pruned trials in grey at the last accuracy they reached; the Pareto
    front, the budget and target lines, and the confirmed test means as their own marks."""
    settings = study.user_attrs.get("settings", {})
    trials = study.get_trials(deepcopy=False)
    figure = go.Figure()
    shown = [t for t in trials if "params" in t.user_attrs and accuracy(t) is not None]
    complete = [t for t in shown if t.state == TrialState.COMPLETE]
    figure.add_scatter(
        name="trial: validation accuracy",
        mode="markers",
        x=[t.user_attrs["params"] for t in complete],
        y=[t.value for t in complete],
        customdata=[[t.number, t.user_attrs.get("macs") or 0] for t in complete],
        hovertemplate="trial %{customdata[0]}: %{x:,} params, %{customdata[1]:,} MACs, "
        "val %{y:.2f}%<extra></extra>",
        marker={
            "size": 9,
            "color": [(t.user_attrs.get("macs") or 0) / 1e6 for t in complete],
            "colorscale": "Viridis",
            "colorbar": {"title": "M MACs / image"},
            "showscale": bool(complete),
        },
    )
    stopped = [t for t in shown if t.state != TrialState.COMPLETE]
    if stopped:
        figure.add_scatter(
            name="trial stopped early: last validation accuracy",
            mode="markers",
            x=[t.user_attrs["params"] for t in stopped],
            y=[accuracy(t) for t in stopped],
            customdata=[[t.number, t.state.name.lower()] for t in stopped],
            hovertemplate="trial %{customdata[0]} (%{customdata[1]}): %{x:,} params, "
            "%{y:.2f}% when stopped<extra></extra>",
            marker={"color": STATE_COLOURS["PRUNED"], "size": 6, "opacity": 0.6},
        )
    front = pareto_front(trials)
    figure.add_scatter(
        name="Pareto front (validation)",
        mode="lines",
        # A step line: between two front points only the cheaper one's accuracy is attained.
        line={"shape": "hv", "color": "#ff7f0e"},
        x=[t.user_attrs["params"] for t in front],
        y=[t.value for t in front],
        hoverinfo="skip",
    )
    confirmed = list(confirmations(study).values())
    if confirmed:
        figure.add_scatter(
            name="confirmed: test mean over seeds (bar: min to max)",
            mode="markers",
            x=[c.params for c in confirmed],
            y=[c.mean for c in confirmed],
            # The bar spans the seeds' range: the spread matters as much as the mean.
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [max(c.test_accuracy) - c.mean for c in confirmed],
                "arrayminus": [c.mean - c.min for c in confirmed],
            },
            customdata=[[c.trial, len(c.seeds), c.min] for c in confirmed],
            hovertemplate="trial %{customdata[0]}: TEST mean %{y:.2f}% over %{customdata[1]} "
            "seeds (min %{customdata[2]:.2f}%)<extra></extra>",
            marker={"symbol": "star", "size": 15, "color": "#d62728"},
        )
    if "budget" in settings:
        figure.add_vline(
            x=settings["budget"],
            line_dash="dash",
            annotation_text=f"budget {settings['budget']:,} params",
            annotation_position="bottom left",
        )
    if "target" in settings:
        figure.add_hline(
            y=settings["target"],
            line_dash="dot",
            annotation_text=f"target {settings['target']}%",
            annotation_position="top left",
        )
    figure.update_layout(
        title="Accuracy against parameters (colour: compute)",
        xaxis_title="parameters",
        yaxis_title=BOTH_AXIS,
        legend={"orientation": "h", "yanchor": "top", "y": -0.15},
    )
    return figure


def history_figure(study: optuna.Study) -> go.Figure:
    """Optuna's optimization history: how fast the search found its best trial."""
    figure = optuna.visualization.plot_optimization_history(study, target_name=ACCURACY_AXIS)
    # Trial numbers are integers: one tick per trial, or per few when there are many.
    trials = len(study.get_trials(deepcopy=False))
    step = max(1, math.ceil(trials / 20))
    figure.update_layout(
        title="Optimization history", xaxis={"tickmode": "linear", "tick0": 0, "dtick": step}
    )
    return figure


def importance_figure(study: optuna.Study) -> tuple[go.Figure | None, list[str]]:
    """Optuna's parameter importances with the caveats it raised, or None and the reason
    there are none.

    Importances need at least two completed trials whose sampled parameters differ;
    below that Optuna would draw equal bars that look like a finding but are not one.
    """
    sampled = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params
    ]
    if len(sampled) < 2:
        return None, [
            "Parameter importances need at least 2 completed trials with sampled "
            f"parameters; this study has {len(sampled)}."
        ]
    names = {name for t in sampled for name in t.params}
    if all(len({repr(t.params.get(name)) for t in sampled}) == 1 for name in names):
        return None, ["Parameter importances need completed trials whose parameters differ."]
    # Optuna warns when its estimate is shaky (few trials per regime); the caveat
    # belongs next to the plot, not on the terminal of whoever wrote the report.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            figure = optuna.visualization.plot_param_importances(study, target_name=ACCURACY_AXIS)
        except (ValueError, RuntimeError) as error:
            return None, [f"Parameter importances could not be computed: {error}"]
    figure.update_layout(title="Parameter importances")
    return figure, [f"Optuna: {message}" for message in sorted({str(w.message) for w in caught})]


def curves_figure(study: optuna.Study, top: int = TOP_CURVES) -> go.Figure:
    """Per-epoch validation accuracy of the best ``top`` completed trials: whether the
    winners were still climbing at the epoch cap or had flattened out."""
    best = top_trials(study, top)
    figure = go.Figure()
    for trial in best:
        curve = trial.user_attrs.get("curve")
        if curve:
            epochs = [point["epoch"] for point in curve]
            values = [point["val_accuracy"] for point in curve]
        else:
            epochs = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[e] for e in epochs]
        params = trial.user_attrs.get("params")
        label = f"trial {trial.number}" + (f" ({params:,} params)" if params else "")
        figure.add_scatter(name=label, mode="lines+markers", x=epochs, y=values)
    settings = study.user_attrs.get("settings", {})
    if "target" in settings:
        figure.add_hline(
            y=settings["target"], line_dash="dot", annotation_text=f"target {settings['target']}%"
        )
    figure.update_layout(
        title=f"Validation accuracy per epoch of the full training (top {len(best)} trials)",
        xaxis={"title": "epoch", "dtick": 1},
        yaxis_title=ACCURACY_AXIS,
    )
    return figure


def write_report(study: optuna.Study, out: str | Path) -> Path:
    """Write the study's report to ``out`` and return its path.

    Raises UsageError, with nothing written, for a study without a completed trial (there
    would be nothing to rank) or a path that cannot be written.
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(
            f"study {study.study_name!r} has no completed trial yet; "
            "run 'budgetnas search' (or wait for a trial to finish) and try again"
        )
    sections = [
        ("Accuracy against parameters", accuracy_figure(study), []),
        ("Optimization history", history_figure(study), []),
        ("Parameter importances", *importance_figure(study)),
        ("Validation curves", curves_figure(study), []),
    ]
    path = Path(out)
    page = _page(study, sections)
    try:  # a missing folder is created, as 'budgetnas export --out' does
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot write {path}: {error.strerror or error}; pass another --out"
        ) from None
    write_atomically(path, page)
    return path


def _page(study: optuna.Study, sections: list[tuple[str, go.Figure | None, list[str]]]) -> str:
    name = html.escape(study.study_name)
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>budgetnas report: {name}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>Study {name}</h1>",
        _table([study.user_attrs.get("settings", {})], caption="Settings"),
        _table([_counts(study)], caption="Trials"),
        _confirmed_table(study),
    ]
    plotly_included = False
    for index, (title, figure, notes) in enumerate(sections):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if figure is not None:
            # plotly.js goes in once, with the first figure; fixed div ids keep the page
            # the same from one run to the next.
            parts.append(
                figure.to_html(
                    full_html=False,
                    include_plotlyjs=not plotly_included,
                    div_id=f"figure{index}",
                    default_height=FIGURE_HEIGHT,
                )
            )
            plotly_included = True
        parts.append(_notes(notes))
    parts.append("</body></html>")
    return "\n".join(parts)


def _notes(notes: list[str]) -> str:
    """One note as a line; several (Optuna warns once per parameter) folded away so
    they do not bury the plot."""
    if not notes:
        return ""
    if len(notes) == 1:
        return f'<p class="note">{html.escape(notes[0])}</p>'
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<details class="note"><summary>{len(notes)} notes</summary><ul>{items}</ul></details>'


def _counts(study: optuna.Study) -> dict[str, int]:
    return trial_counts(study)


def _confirmed_table(study: optuna.Study) -> str:
    confirmed = confirmations(study)
    if not confirmed:
        return '<p class="note">No trial confirmed on the test set yet (budgetnas confirm).</p>'
    winners = selected(study)
    winner = winners[0].trial if winners else None
    rows = [
        {
            "trial": c.trial,
            "params": f"{c.params:,}",
            "val %": f"{c.val_accuracy:.2f}",
            "test mean %": f"{c.mean:.2f}",
            "test min %": f"{c.min:.2f}",
            "seeds": len(c.seeds),
            "epochs": c.epochs,
            "selected": "winner" if c.trial == winner else "yes" if c.selected else "no",
        }
        for c in sorted(confirmed.values(), key=lambda c: (-c.val_accuracy, c.params))
    ]
    return _table(rows, caption="Confirmed on the test set")


def _table(rows: list[dict], caption: str) -> str:
    if not rows or not rows[0]:
        return ""
    head = "".join(f"<th>{html.escape(str(key))}</th>" for key in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(value))}</td>" for value in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def write_atomically(path: Path, text: str, option: str = "--out") -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, which
    ``os.replace`` then moves in one step; any failure removes the temporary file and
    ends in a UsageError that names ``option``, the command's option for the path."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Mode "x" honours the umask (unlike mkstemp's 0600), so the report is as
        # readable as any other file its owner writes.
        with open(temp, "x", encoding="utf-8") as file:
            file.write(text)
        os.replace(temp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(error, OSError):
            raise UsageError(
                f"cannot write {path}: {error.strerror or error}; pass another {option}"
            ) from None
        raise
