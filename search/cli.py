"""The ``budgetnas`` command: a thin layer over functions the tests call directly.

Bad input ends in a one-line error and exit code 2 before anything is written;
Ctrl-C ends in exit code 130 with the command that resumes the work.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore

from search.bench import add_arguments as bench_arguments
from search.bench import run as run_bench
from search.confirm import confirm_study, selected
from search.dashboard import serve
from search.data import DataError, confirm_data
from search.report import write_report
from search.results import export_trial, studies_table, trials_table, write_export
from search.storage import (
    DEFAULT_ARTIFACTS,
    DEFAULT_STORAGE,
    UsageError,
    artifact_store,
    load_study,
    open_storage,
)
from search.study import SearchConfig, check_device, run_search, run_worker
from search.train import Recipe, train
from space import ZOO, SpecError, analyse, build, from_json

INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _percentage(text: str) -> float:
    """An accuracy target; checked here so that 'abc' gets the same hint as 101."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a percentage in (0, 100], got {text!r}"
        ) from None
    if not 0 < value <= 100:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return value


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default: %(default)s)"
    )
    parser.add_argument(
        "--artifacts",
        default=DEFAULT_ARTIFACTS,
        help="artifact folder holding trained weights (default: %(default)s)",
    )


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="folder with MNIST/raw/ (default: $BUDGETNAS_DATA or ./data)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def build_parser() -> Parser:
    parser = Parser(
        prog="budgetnas", description="Search tiny MNIST conv nets under a parameter budget."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser("search", help="run (or resume) a search, confirm and select")
    search.add_argument(
        "--budget", type=_positive_int, default=8000, help="max trainable parameters"
    )
    search.add_argument("--epochs", type=_positive_int, default=15, help="epoch cap per training")
    search.add_argument(
        "--target", type=_percentage, default=99.4, help="test accuracy to clear, percent"
    )
    search.add_argument(
        "--trials", type=_positive_int, default=50, help="finished trials to reach (resumes count)"
    )
    search.add_argument("--study", help="study name (default: mnist-<budget>p-<epochs>e)")
    _add_storage(search)
    _add_data(search)
    search.add_argument("--seed", type=int, default=0)
    search.add_argument(
        "--timeout", type=float, help="stop starting trials after this many seconds"
    )
    search.add_argument(
        "--train-subset",
        type=_positive_int,
        help="train on the first N training images (quick looks)",
    )
    search.add_argument(
        "--val-size",
        type=_positive_int,
        default=10_000,
        help="validation images held out of training",
    )
    search.add_argument("--pruner", default="median", help="median, halving, hyperband or none")
    search.add_argument(
        "--workers", type=_positive_int, default=1, help="trial processes on this machine"
    )
    search.add_argument(
        "--warm-start", action="store_true", help="first try the reference nets that fit"
    )
    search.add_argument(
        "--top-k", type=_positive_int, default=3, help="trials to confirm after the search"
    )
    search.add_argument("--seeds", type=_positive_int, default=3, help="seeds per confirmation")
    search.add_argument("--no-confirm", action="store_true", help="skip confirmation and selection")
    search.add_argument("--heartbeat", type=int, default=60, help=argparse.SUPPRESS)
    search.set_defaults(run=cmd_search)

    worker = commands.add_parser("worker", help="join an existing study as one more worker")
    worker.add_argument("study")
    worker.add_argument(
        "--trials", type=int, help="finished trials to reach (default: the study's)"
    )
    _add_storage(worker)
    _add_data(worker)
    worker.add_argument("--timeout", type=float)
    worker.add_argument("--pruner", help="default: the one the search was started with")
    worker.add_argument("--heartbeat", type=int, default=60, help=argparse.SUPPRESS)
    worker.set_defaults(run=cmd_worker)

    confirm = commands.add_parser(
        "confirm", help="retrain the top trials with several seeds and select"
    )
    confirm.add_argument("study")
    _add_storage(confirm)
    _add_data(confirm)
    confirm.add_argument("--top-k", type=_positive_int, default=3)
    confirm.add_argument("--seeds", type=_positive_int, default=3)
    confirm.set_defaults(run=cmd_confirm)

    studies = commands.add_parser("studies", help="list the studies in a storage")
    _add_storage(studies)
    studies.set_defaults(run=cmd_studies)

    show = commands.add_parser("show", help="the top trials of a study")
    show.add_argument("study")
    show.add_argument("--top", type=_positive_int, default=10)
    _add_storage(show)
    show.set_defaults(run=cmd_show)

    export = commands.add_parser("export", help="write a trial as a standalone module with weights")
    export.add_argument("study")
    export.add_argument("--trial", type=int, help="trial number (default: the selected winner)")
    export.add_argument("--out", help="target .py (default: models/<study>.py)")
    export.add_argument("--force", action="store_true", help="overwrite an existing export")
    _add_storage(export)
    export.set_defaults(run=cmd_export)

    report = commands.add_parser("report", help="a self-contained HTML report of a study")
    report.add_argument("study")
    report.add_argument("--out", default="report.html")
    _add_storage(report)
    report.set_defaults(run=cmd_report)

    dashboard = commands.add_parser("dashboard", help="open optuna-dashboard on a storage")
    _add_storage(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(run=cmd_dashboard)

    train = commands.add_parser("train", help="train a reference net, spec JSON or exported module")
    train.add_argument("target", help=f"one of {', '.join(ZOO)}, a spec .json or an exported .py")
    train.add_argument("--epochs", type=_positive_int, default=15)
    train.add_argument("--seed", type=int, default=0)
    _add_data(train)
    train.add_argument("--train-subset", type=_positive_int)
    train.add_argument("--save", help="export the trained model as a standalone module (PATH.py)")
    train.add_argument("--force", action="store_true", help="overwrite an existing --save target")
    train.set_defaults(run=cmd_train)

    bench = commands.add_parser(
        "bench", help="training speed: the engine against a DataLoader pipeline"
    )
    bench_arguments(bench)
    bench.set_defaults(run=run_bench)

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _quiet_optuna()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (UsageError, DataError, SpecError) as error:
        print(f"budgetnas {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("search", "worker"):
            command = shlex.join(["budgetnas", *argv])
            print(
                "\ninterrupted: the running trial is marked failed and queued to run first on "
                f"resume; the study is intact. Resume with:\n  {command}",
                file=sys.stderr,
            )
        else:
            print(f"\ninterrupted: 'budgetnas {args.command}' stopped", file=sys.stderr)
        return INTERRUPTED


def _quiet_optuna() -> None:
    """budgetnas prints its own line per trial; Optuna's INFO log would repeat it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    """A plain text table; ``columns`` maps row keys to headers."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else ""
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(row.get(key)) for key in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(columns.values())]
    lines = ["  ".join(h.rjust(w) for h, w in zip(columns.values(), widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _selection_table(results) -> str:
    rows = [
        {
            "trial": c.trial,
            "params": c.params,
            "val": c.val_accuracy,
            "mean": c.mean,
            "min": c.min,
            "seeds": len(c.seeds),
            "epochs": c.epochs,
            "selected": c.selected,
        }
        for c in results
    ]
    return _table(
        rows,
        {
            "trial": "trial",
            "params": "params",
            "val": "val %",
            "mean": "test mean %",
            "min": "test min %",
            "seeds": "seeds",
            "epochs": "epochs",
            "selected": "selected",
        },
    )


def cmd_search(args: argparse.Namespace) -> int:

    config = SearchConfig(
        budget=args.budget,
        epochs=args.epochs,
        target=args.target,
        trials=args.trials,
        study=args.study,
        storage=args.storage,
        artifacts=args.artifacts,
        data_dir=args.data_dir,
        device=args.device,
        seed=args.seed,
        timeout=args.timeout,
        train_subset=args.train_subset,
        val_size=args.val_size,
        pruner=args.pruner,
        warm_start=args.warm_start,
        workers=args.workers,
        heartbeat=args.heartbeat,
        progress_bars=sys.stderr.isatty(),
        epoch_lines=not sys.stderr.isatty(),
    )
    config.check()  # run_search checks again; this keeps bad input from printing a header
    print(
        f"study {config.study_name!r} in {config.storage}: budget {config.budget:,} params, "
        f"{config.epochs} epochs, target {config.target}%",
        flush=True,
    )
    study = run_search(config)
    if args.no_confirm:
        print(
            f"search done; confirm with: budgetnas confirm {config.study_name} --storage {config.storage}"
        )
        return 0
    results = confirm_study(
        study,
        artifact_store(config.artifacts),
        top_k=args.top_k,
        seeds=args.seeds,
        data_dir=config.data_dir,
        device=check_device(config.device),
        progress=sys.stderr.isatty(),
    )
    return _print_selection(study, results, args.storage)


def _print_selection(study: optuna.Study, results, storage: str) -> int:
    print("\n" + _selection_table(results))
    winners = selected(study)  # the same winner that 'budgetnas export' picks
    if winners:
        best = winners[0]
        print(
            f"\nselected: trial {best.trial}, {best.params:,} params, mean test {best.mean:.2f}% "
            f"(min {best.min:.2f}%) over {len(best.seeds)} seeds"
        )
        print(f"export it: budgetnas export {study.study_name} --storage {storage}")
    else:
        print(
            "\nno architecture cleared the target yet: run more trials (same command) or raise --epochs"
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:

    study = _existing_study(args)
    settings = study.user_attrs.get("settings", {})
    if not settings or "trials" not in study.user_attrs:
        raise UsageError(
            f"study {args.study!r} was not created by 'budgetnas search'; start it with that first"
        )
    config = SearchConfig(
        budget=settings["budget"],
        epochs=settings["epochs"],
        target=settings["target"],
        trials=args.trials or study.user_attrs["trials"],
        study=args.study,
        storage=args.storage,
        artifacts=args.artifacts,
        data_dir=args.data_dir,
        device=args.device,
        seed=settings["seed"],
        timeout=args.timeout,
        train_subset=settings["train_subset"],
        val_size=settings["val_size"],
        pruner=args.pruner or settings.get("pruner", "median"),
        heartbeat=args.heartbeat,
    )
    config.check()
    # A random worker index gives each hand-started worker its own sampler seed.
    run_worker(config, worker=random.randrange(1, 2**20))
    return 0


def _existing_study(args: argparse.Namespace) -> optuna.Study:
    """The study named on the command line, from a storage that must already exist."""
    return load_study(
        open_storage(args.storage, must_exist=True, heartbeat_interval=None), args.study
    )


def cmd_confirm(args: argparse.Namespace) -> int:

    device = check_device(args.device)
    study = _existing_study(args)
    results = confirm_study(
        study,
        args.artifacts,  # a path: confirm_study creates the folder only after its checks
        top_k=args.top_k,
        seeds=args.seeds,
        data_dir=args.data_dir,
        device=device,
        progress=sys.stderr.isatty(),
    )
    return _print_selection(study, results, args.storage)


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
                "selected": "selected",
            },
        )
    )
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
                "val": "val %",
                "test_mean": "test mean %",
                "test_min": "test min %",
                "epochs": "epochs",
                "state": "state",
                "selected": "selected",
            },
        )
    )
    return 0


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
    _check_folder_writable(Path(args.out), "--out")
    print(f"wrote {write_report(study, args.out)}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:

    serve(args.storage, args.artifacts, host=args.host, port=args.port)
    return 0


def load_target(target: str) -> tuple[str, dict]:
    """(name, spec) of a zoo name, a spec JSON file or an exported module."""

    if target in ZOO:
        return target, ZOO[target]
    path = Path(target)
    if not path.is_file():
        raise UsageError(f"{target!r} is neither a reference net ({', '.join(ZOO)}) nor a file")
    if path.suffix == ".json":
        return path.stem, from_json(path.read_text())
    if path.suffix == ".py":
        module_spec = importlib.util.spec_from_file_location(f"_budgetnas_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            raise UsageError(f"cannot import {path}: {error}") from None
        if not isinstance(getattr(module, "SPEC", None), dict):
            raise UsageError(f"{path} has no SPEC dict; is it a budgetnas export?")
        return path.stem, module.SPEC
    raise UsageError(f"{target}: expected a .json spec or an exported .py module")


def cmd_train(args: argparse.Namespace) -> int:

    name, spec = load_target(args.target)
    analysis = analyse(spec)
    device = check_device(args.device)
    if args.save:
        _check_writable(Path(args.save), args.force)
    try:
        fit, test = confirm_data(args.data_dir, device, train_subset=args.train_subset)
    except ValueError as error:  # --train-subset larger than the training set
        raise UsageError(f"--train-subset: {error}; pass a smaller one") from None
    recipe = Recipe(epochs=args.epochs)
    print(
        f"training {name}: {analysis.params:,} params, RF {analysis.receptive_field}, {len(fit):,} "
        f"training images, {args.epochs} epochs, seed {args.seed}, {device}",
        flush=True,
    )
    print(f"{'epoch':>5}  {'train loss':>10}  {'test %':>7}  {'seconds':>7}", flush=True)

    def on_epoch(stats) -> None:
        print(
            f"{stats.epoch:>5}  {stats.train_loss:>10.4f}  {stats.accuracy:>7.2f}  {stats.seconds:>7.1f}",
            flush=True,
        )

    torch.manual_seed(args.seed)
    result = train(
        build(spec),
        fit,
        test,
        recipe,
        seed=args.seed,
        device=device,
        on_epoch=on_epoch,
        progress=sys.stderr.isatty(),
    )
    print(
        f"final-epoch test accuracy: {result.accuracy:.2f}% ({args.epochs} epochs, {result.seconds:.0f} s on {result.device})"
    )
    if args.save:
        metrics = {
            "test_accuracy": [result.accuracy],
            "test_accuracy_mean": result.accuracy,
            "test_accuracy_min": result.accuracy,
            "seeds": [args.seed],
            "weights_seed": args.seed,
            "weights_test_accuracy": result.accuracy,
            "epochs": args.epochs,
            "params": analysis.params,
            "train_subset": args.train_subset,
        }
        origin = (
            f"Trained by 'budgetnas train {args.target}' with the default recipe, seed {args.seed}."
        )
        path = write_export(
            spec,
            args.save,
            "--save",
            state_dict=result.state_dict,
            metrics=metrics,
            origin=origin,
            force=args.force,
        )
        print(f"wrote {path} and {path.with_suffix('.pt')}")
    return 0


def _check_writable(path: Path, force: bool) -> None:
    """Refuse an export target before hours of training, not after."""
    if path.suffix != ".py" or not path.stem.isidentifier():
        raise UsageError(f"--save must be a PATH.py with an importable module name, got {path}")
    for target in (path, path.with_suffix(".pt")):  # the export writes both
        if target.exists() and not force:
            raise UsageError(f"{target} already exists; pass --force to overwrite it")
    _check_folder_writable(path, "--save")


def _check_folder_writable(path: Path, option: str) -> None:
    """A file can be created beside ``path`` (probed with an unnamed temporary file that
    leaves nothing behind), so a failure is a one-line error rather than an OSError."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; pass a file name")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UsageError(
            f"cannot write {path}: {error.strerror or error}; pass another {option}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
