"""``budgetnas studies``, ``choices``, ``show``, ``front``, ``export``, ``report`` and
``dashboard``: reading a storage's results back."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from search.cli.common import (
    _add_storage,
    _check_folder_writable,
    _existing_study,
    _percentage,
    _positive_int,
    _table,
)
from search.errors import UsageError
from search.results.dashboard import serve
from search.results.export import export_trial
from search.results.front import (
    COLUMNS,
    front_markdown,
    read_front,
    row_cells,
    section_rows,
    target_lines,
    write_front_html,
)
from search.results.report import write_report
from search.results.tables import choices_table, epoch_cost_table, studies_table, trials_table
from search.study.storage import DEFAULT_STORAGE, open_storage


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``studies``, ``choices``, ``show``, ``front``, ``export``, ``report`` and
    ``dashboard`` commands."""
    studies = commands.add_parser("studies", help="list the studies in a storage")
    _add_storage(studies)
    studies.set_defaults(run=cmd_studies)

    choices = commands.add_parser(
        "choices", help="which choices of the space win, over the trials of some searches"
    )
    choices.add_argument(
        "--storage",
        nargs="+",
        default=[DEFAULT_STORAGE],
        help=f"Optuna storage URLs whose studies to pool (default: {DEFAULT_STORAGE})",
    )
    choices.add_argument(
        "--budget", type=_positive_int, help="only studies with this budget (default: all)"
    )
    choices.add_argument(
        "--target",
        type=_percentage,
        default=99.4,
        help="validation accuracy counted as reached (default: %(default)s)",
    )
    choices.set_defaults(run=cmd_choices)

    show = commands.add_parser("show", help="the top trials of a study")
    show.add_argument("study", help="study name (budgetnas studies lists them)")
    show.add_argument("--top", type=_positive_int, default=10, help="trials to list")
    _add_storage(show)
    show.set_defaults(run=cmd_show)

    front = commands.add_parser(
        "front",
        help="how small a net can be and still clear T%%: the confirmed nets of every study "
        "in some storages, the Pareto front of parameters against mean test accuracy",
    )
    front.add_argument(
        "--storage",
        action="extend",
        nargs="+",
        metavar="URL",
        help="Optuna storage URLs whose studies to read, read-only; repeat the option or "
        f"list several (default: {DEFAULT_STORAGE})",
    )
    front.add_argument(
        "--references",
        nargs="+",
        default=[],
        metavar="FILE",
        help="modules written by 'budgetnas export' or 'budgetnas train --seeds 3 --save': "
        "hand-made nets shown beside the front from their METRICS, never on it "
        "(default: none)",
    )
    front.add_argument(
        "--target",
        type=_percentage,
        help="mean test accuracy to clear: prints the smallest net that clears it, per "
        "epoch cap (default: no target line)",
    )
    front.add_argument(
        "--epochs",
        type=_positive_int,
        help="keep only the nets trained to this epoch cap (default: every epoch cap)",
    )
    front.add_argument(
        "--html",
        metavar="PATH",
        help="also write the figure as one self-contained HTML page; missing folders are "
        "created (default: no figure)",
    )
    front.add_argument(
        "--markdown",
        action="store_true",
        help="print one markdown table instead of the text sections, e.g. for a README",
    )
    front.set_defaults(run=cmd_front)

    export = commands.add_parser("export", help="write a trial as a standalone module with weights")
    export.add_argument("study", help="study name (budgetnas studies lists them)")
    export.add_argument("--trial", type=int, help="trial number (default: the selected winner)")
    export.add_argument(
        "--out", help="target .py; missing folders are created (default: models/<study>.py)"
    )
    export.add_argument("--force", action="store_true", help="overwrite an existing export")
    _add_storage(export)
    export.set_defaults(run=cmd_export)

    report = commands.add_parser("report", help="a self-contained HTML report of a study")
    report.add_argument("study", help="study name (budgetnas studies lists them)")
    report.add_argument(
        "--out", default="report.html", help="HTML file to write; missing folders are created"
    )
    _add_storage(report)
    report.set_defaults(run=cmd_report)

    dashboard = commands.add_parser("dashboard", help="open optuna-dashboard on a storage")
    _add_storage(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to serve on")
    dashboard.add_argument("--port", type=int, default=8080, help="port to serve on")
    dashboard.set_defaults(run=cmd_dashboard)


def cmd_studies(args: argparse.Namespace) -> int:

    rows = studies_table(open_storage(args.storage, must_exist=True, heartbeat_interval=None))
    if not rows:
        print(f"no studies in {args.storage}")
        return 0
    print(
        _table(
            rows,
            {
                "study": "study",
                "budget": "budget",
                "epochs": "epochs",
                "trials": "trials",
                "complete": "complete",
                "pruned": "pruned",
                "best_val": "best val %",
                "confirmed": "confirmed trials",
                "selected": "cleared target",
            },
        )
    )
    return 0


def cmd_choices(args: argparse.Namespace) -> int:

    studies = {}  # "storage study" -> study
    for url in args.storage:
        storage = open_storage(url, must_exist=True, heartbeat_interval=None)
        for name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            if args.budget in (None, study.user_attrs.get("settings", {}).get("budget")):
                studies[f"{url} {name}"] = study
    if not studies:
        within = "" if args.budget is None else f" with budget {args.budget:,}"
        raise UsageError(f"no study{within} in {', '.join(args.storage)}; check --budget")
    print(f"{len(studies)} studies: {', '.join(study.study_name for study in studies.values())}")
    print(
        _table(
            choices_table(studies.values(), args.target),
            {
                "choice": "choice",
                "screened": "candidates",
                "first_rung": "1-epoch rung median %",
                "full": "trained to cap",
                "mean_val": "mean val %",
                "best_val": "best val %",
                "reached": f">= {args.target}%",
            },
        )
    )
    costs = epoch_cost_table(studies)
    if costs:
        print("\nwhat sets the time per epoch (Spearman's rho with the measured seconds):")
        columns = {
            "study": "study",
            "candidates": "candidates",
            "seconds": "s/epoch",
            "macs_rho": "MACs",
            "activations_rho": "activations",
        }
        print(_table(costs, columns))
    return 0


def cmd_show(args: argparse.Namespace) -> int:

    study = _existing_study(args)
    settings = study.user_attrs.get("settings", {})
    budget = settings.get("budget")
    print(
        f"study {args.study}: budget {f'{budget:,}' if budget is not None else '?'} params, "
        f"{settings.get('epochs', '?')} epochs, target {settings.get('target', '?')}%"
    )
    print(
        _table(
            trials_table(study, args.top),
            {
                "trial": "trial",
                "params": "params",
                "macs": "MACs",
                "activations": "activations",
                "epoch_seconds": "s/epoch",
                "val": "val %",
                "test_mean": "test mean %",
                "test_min": "test min %",
                "reached": "trained to",
                "state": "state",
                "selected": "selected",
                "origin": "from",
            },
        )
    )
    return 0


def cmd_front(args: argparse.Namespace) -> int:

    if args.html:
        _check_html(Path(args.html))
    storages = args.storage or [DEFAULT_STORAGE]
    front = read_front(storages, args.references, epochs=args.epochs)
    if args.markdown:
        print(front_markdown(front, args.target))
    else:
        sections = []
        for epochs in front.epoch_caps:
            rows = section_rows(front, epochs)
            searched = [row for row in rows if not row.reference]
            studies = {(row.storage, row.study) for row in searched}
            references = len(rows) - len(searched)
            sections.append(
                f"{epochs} epochs: {_count(len(searched), 'confirmed net')} from "
                f"{_count(len(studies), 'study', 'studies')}, "
                f"{sum(row.on_front for row in searched)} on the front (*)"
                + (f"; {_count(references, 'reference')}" if references else "")
                + "\n"
                + _table([row_cells(row) for row in rows], COLUMNS)
            )
        print("\n\n".join(sections))
        if args.target is not None:
            print(f"\nthe smallest net with mean test accuracy >= {args.target}%:")
            print("\n".join(f"  {line}" for line in target_lines(front, args.target)))
    if args.html:
        print(f"wrote {write_front_html(front, args.html, args.target)}")
    return 0


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"


def _check_html(path: Path) -> None:
    """--html can be written, checked before any storage is read: the nearest folder on its
    path that exists must take a new file (missing folders are created on writing)."""
    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if existing == path.parent:
        _check_folder_writable(path, "--html")
        return
    try:
        _check_folder_writable(existing / path.name, "--html")
    except UsageError:
        raise UsageError(
            f"cannot write {path}: {existing} is not a writable folder; pass another --html"
        ) from None


def cmd_export(args: argparse.Namespace) -> int:

    study = _existing_study(args)
    if not Path(args.artifacts).is_dir():
        raise UsageError(
            f"no artifact folder at {args.artifacts}; pass --artifacts where the search stored weights"
        )
    out = args.out or f"models/{args.study.replace('-', '_')}.py"
    path = export_trial(
        study, FileSystemArtifactStore(args.artifacts), out, number=args.trial, force=args.force
    )
    print(f"wrote {path} and {path.with_suffix('.pt')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:

    study = _existing_study(args)
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; pass a file name")
    print(f"wrote {write_report(study, args.out)}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:

    serve(args.storage, args.artifacts, host=args.host, port=args.port)
    return 0
