"""The ``budgetnas`` command: a thin layer over functions the tests call directly.

Bad input ends in a one-line error and exit code 2 before anything is written;
Ctrl-C ends in exit code 130 with the command that resumes the work.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from search.bench import add_arguments as bench_arguments
from search.bench import run as run_bench
from search.bench_search import run_bench_search
from search.check import RULES, check, inspect_target, render
from search.confirm import confirm_study, selected
from search.dashboard import serve
from search.data import DataError, confirm_data
from search.fidelity import print_family_table, print_fidelity_table, run_fidelity_study
from search.memory import check_memory
from search.objective import Terminated, handle_stop_signals
from search.report import write_report
from search.results import (
    choices_table,
    epoch_cost_table,
    export_trial,
    over_budget,
    over_cap,
    studies_table,
    trials_table,
    write_export,
)
from search.sampler import ACTIVATIONS_PER_PARAM, MACS_PER_PARAM, MIN_MAX_ACTIVATIONS
from search.storage import (
    DEFAULT_ARTIFACTS,
    DEFAULT_STORAGE,
    UsageError,
    artifact_store,
    load_study,
    open_storage,
)
from search.study import (
    PRUNERS,
    SearchConfig,
    check_device,
    check_precision,
    clock,
    finished_count,
    run_search,
    run_worker,
)
from search.target import load_target, own_model_files, save_own_model
from search.train import PRECISIONS, Recipe, train
from space import ZOO, SpecError

INTERRUPTED = 130
TERMINATED = 143


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help line ends with its default; examples keep their line breaks.

    Options whose default is None say in their own words what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "search": [
        "budgetnas search --budget 8000 --epochs 15 --target 99.4 --timeout 3600",
        "budgetnas search --budget 8000 --epochs 2 --trials 6 --train-subset 10000  # 2 minutes",
    ],
    "worker": ["budgetnas worker mnist-8000p-15e --storage postgresql://user@host/budgetnas"],
    "confirm": ["budgetnas confirm mnist-8000p-15e --top-k 1 --seeds 3"],
    "studies": ["budgetnas studies --storage sqlite:///results/search.db"],
    "choices": [
        "budgetnas choices --budget 8000 --storage sqlite:///results/search_8000.db "
        "sqlite:///results/search_8000_60min.db"
    ],
    "show": ["budgetnas show mnist-8000p-15e --top 20"],
    "export": [
        "budgetnas export mnist-8000p-15e                # the selected winner",
        "budgetnas export mnist-8000p-15e --trial 12 --out my_net.py",
    ],
    "report": ["budgetnas report mnist-8000p-15e --out reports/8k.html"],
    "dashboard": ["budgetnas dashboard --storage sqlite:///studies.db --port 8080"],
    "train": [
        "budgetnas train ref7676 --epochs 15 --save models/ref7676.py",
        "budgetnas train my_model.py:Net --epochs 15 --seeds 3  # your own nn.Module",
    ],
    "check": [
        "budgetnas check ref14874 --budget 20000 --require bn,dropout,gap --forbid fc",
        "budgetnas check my_model.py:Net --budget 8000 --require bn,gap  # exit 1 if one fails",
    ],
    "bench": ["budgetnas bench", "budgetnas bench --device cuda --out bench.json"],
    "bench-fidelity": ["budgetnas bench-fidelity --candidates 24 --out results/fidelity.jsonl"],
    "bench-search": ["budgetnas bench-search --minutes 45 --budget 8000 --out results/"],
}


def _finish_help(commands: argparse._SubParsersAction) -> None:
    """Give every command the defaults-showing help and its examples."""
    for name, command in commands.choices.items():
        command.formatter_class = HelpFormatter
        lines = EXAMPLES.get(name, [])
        if lines:
            command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)


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


def _add_precision(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default,
        help="training's autocast dtype. auto: bf16 on CUDA cards from compute capability 8.0 "
        "(A100, RTX 30xx, L4, H100...), fp16 with loss scaling on older ones (V100, T4), "
        "fp32 on CPU; evaluation is always fp32 (default: "
        + ("%(default)s)" if default else "the one the search was started with)"),
    )


_TARGET_HELP = (
    f"a reference net ({', '.join(ZOO)}), a spec .json, a budgetnas export .py, or "
    "FILE.py:ClassName for your own nn.Module (no constructor arguments, N x 1 x 28 x 28 "
    "in, N x 10 out)"
)


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
    _add_precision(search)
    search.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the sampler and the trainings"
    )
    search.add_argument(
        "--timeout",
        type=float,
        help="seconds for the whole run, confirmation included (default: no limit)",
    )
    search.add_argument(
        "--train-subset",
        type=_positive_int,
        help="train on the first N training images, for quick looks (default: all 50,000)",
    )
    search.add_argument(
        "--val-size",
        type=_positive_int,
        default=10_000,
        help="validation images held out of training",
    )
    search.add_argument(
        "--pruner",
        default="rungs",
        help=f"{', '.join(PRUNERS)}. rungs: successive halving over short trainings, then the full cap; the others "
        "judge one full training per trial epoch by epoch (default: %(default)s)",
    )
    search.add_argument(
        "--max-macs",
        type=_positive_int,
        help="compute cap: multiply-accumulates per image; over-cap candidates are pruned "
        f"untrained (default: {MACS_PER_PARAM} x --budget)",
    )
    search.add_argument(
        "--max-activations",
        type=_positive_int,
        help="speed cap: values the conv and linear layers write per image, which set the "
        "time per epoch on a CPU; over-cap candidates are pruned untrained (default: "
        f"{ACTIVATIONS_PER_PARAM} x --budget, at least {MIN_MAX_ACTIVATIONS:,})",
    )
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
    worker.add_argument("study", help="name of a study that 'budgetnas search' created")
    worker.add_argument(
        "--trials", type=int, help="finished trials to reach (default: the study's)"
    )
    _add_storage(worker)
    _add_data(worker)
    _add_precision(worker, default=None)
    worker.add_argument(
        "--timeout",
        type=float,
        help="stop starting trials after this many seconds (default: no limit)",
    )
    worker.add_argument("--pruner", help="default: the one the search was started with")
    worker.add_argument("--heartbeat", type=int, default=60, help=argparse.SUPPRESS)
    worker.set_defaults(run=cmd_worker)

    confirm = commands.add_parser(
        "confirm", help="retrain the top trials with several seeds and select"
    )
    confirm.add_argument("study", help="study name (budgetnas studies lists them)")
    _add_storage(confirm)
    _add_data(confirm)
    _add_precision(confirm)
    confirm.add_argument(
        "--top-k", type=_positive_int, default=3, help="most trials to confirm, best first"
    )
    confirm.add_argument(
        "--seeds", type=_positive_int, default=3, help="trainings per confirmed trial"
    )
    confirm.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="seeds trained side by side in processes sharing the cores",
    )
    confirm.set_defaults(run=cmd_confirm)

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

    train = commands.add_parser(
        "train", help="train a reference net, a spec, an export or your own nn.Module"
    )
    train.add_argument("target", help=_TARGET_HELP)
    train.add_argument(
        "--epochs", type=_positive_int, default=15, help="epochs of the training (default: 15)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the init and data order (default: 0)"
    )
    train.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="train N times, with seeds --seed, --seed + 1, ...; prints each run's final-epoch "
        "test accuracy, then their mean and min (default: 1)",
    )
    _add_data(train)
    _add_precision(train)
    train.add_argument(
        "--train-subset",
        type=_positive_int,
        help="train on the first N training images (default: all 60,000)",
    )
    train.add_argument(
        "--save",
        help="export the trained model (the median seed's weights) as a module PATH.py with "
        "load() and METRICS; your own module's source is copied beside it as PATH_model.py "
        "(default: no export)",
    )
    train.add_argument("--force", action="store_true", help="overwrite an existing --save target")
    train.set_defaults(run=cmd_train)

    check_parser = commands.add_parser(
        "check",
        help="what a network is made of; rules that fail exit 1 (for CI)",
        description="Report a network's trainable parameters, BatchNorm, dropout, global\n"
        "average pooling, fully connected layer, receptive field, MACs per image and\n"
        "output shape. --budget, --require and --forbid make it a check for CI: exit 1\n"
        "if a rule fails, 0 if all pass.",
    )
    check_parser.add_argument("target", help=_TARGET_HELP)
    check_parser.add_argument(
        "--budget",
        type=_positive_int,
        help="fail above this many trainable parameters (default: no limit)",
    )
    rules = ",".join(RULES)
    check_parser.add_argument(
        "--require",
        default="",
        metavar="RULES",
        help=f"comma-separated, from {rules}: fail unless the network has each (default: none)",
    )
    check_parser.add_argument(
        "--forbid",
        default="",
        metavar="RULES",
        help=f"comma-separated, from {rules}: fail if the network has any (default: none)",
    )
    check_parser.set_defaults(run=cmd_check)

    bench = commands.add_parser(
        "bench", help="training speed: the engine against a DataLoader pipeline"
    )
    bench_arguments(bench)
    bench.set_defaults(run=run_bench)

    fidelity = commands.add_parser(
        "bench-fidelity",
        help="how well short trainings rank candidates like the full one (Spearman's rho)",
    )
    fidelity.add_argument(
        "--candidates",
        type=_positive_int,
        default=24,
        help="candidates sampled from the space (default: %(default)s)",
    )
    fidelity.add_argument(
        "--budgets",
        default="4000,8000",
        help="comma-separated parameter budgets the candidates alternate between "
        "(default: %(default)s)",
    )
    fidelity.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="trainings side by side, one thread each (default: %(default)s)",
    )
    fidelity.add_argument(
        "--out",
        default="results/fidelity.jsonl",
        help="JSON-lines results; a rerun resumes from it (default: %(default)s)",
    )
    fidelity.add_argument(
        "--data-dir", help="folder with MNIST/raw/ (default: $BUDGETNAS_DATA or ./data)"
    )
    fidelity.set_defaults(run=cmd_bench_fidelity)

    race = commands.add_parser(
        "bench-search",
        help="the default search against TPE + median pruner on full trainings, same clock",
    )
    race.add_argument(
        "--minutes", type=float, default=45, help="wall time of each arm (default: %(default)s)"
    )
    race.add_argument(
        "--budget", type=_positive_int, default=8000, help="max parameters (default: %(default)s)"
    )
    race.add_argument(
        "--epochs", type=_positive_int, default=15, help="epoch cap (default: %(default)s)"
    )
    race.add_argument(
        "--target",
        type=_percentage,
        default=99.4,
        help="validation accuracy whose first crossing is timed (default: %(default)s)",
    )
    race.add_argument(
        "--out",
        default="results",
        help="folder for bench_search.db, .html and artifacts (default: %(default)s)",
    )
    race.add_argument(
        "--train-subset",
        type=_positive_int,
        help="train on the first N fit images, for quick looks (default: all 50,000)",
    )
    race.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, the samplers and the trainings, the same for both arms "
        "(default: 0)",
    )
    _add_data(race)
    race.set_defaults(run=cmd_bench_search)

    _finish_help(commands)
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
    except KeyboardInterrupt as error:
        how = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        if args.command in ("search", "worker"):
            command = shlex.join(["budgetnas", *argv])
            print(
                f"\n{how}: the running trial is marked failed and queued to run first on "
                f"resume; the study is intact. Resume with:\n  {command}",
                file=sys.stderr,
            )
        else:
            print(f"\n{how}: 'budgetnas {args.command}' stopped", file=sys.stderr)
        return TERMINATED if isinstance(error, Terminated) else INTERRUPTED


def entry() -> None:
    """The ``budgetnas`` console script: SIGTERM (kill, timeout, schedulers) stops the
    command as Ctrl-C does, with exit code 143."""
    handle_stop_signals()
    sys.exit(main())


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

    started = time.monotonic()
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
        precision=args.precision,
        seed=args.seed,
        timeout=args.timeout,
        started_at=time.time(),
        train_subset=args.train_subset,
        val_size=args.val_size,
        pruner=args.pruner,
        max_macs=args.max_macs,
        max_activations=args.max_activations,
        warm_start=args.warm_start,
        confirm_seeds=0 if args.no_confirm else args.seeds,
        estimate=True,
        workers=args.workers,
        heartbeat=args.heartbeat,
        progress_bars=sys.stderr.isatty(),
        epoch_lines=not sys.stderr.isatty(),
    )
    config.check()  # run_search checks again; this keeps bad input from printing a header
    print(
        f"study {config.study_name!r} in {config.storage}: budget {config.budget:,} params, "
        f"caps {config.mac_cap:,} MACs and {config.activation_cap:,} activations, "
        f"{config.epochs} epochs, target {config.target}%, pruner {config.pruner}",
        flush=True,
    )
    study = run_search(config)
    finished = finished_count(study)
    if finished < config.trials:
        print(
            f"--timeout {args.timeout:g} s ended the search at {finished} of {config.trials} "
            "trials; rerun the same command to resume it",
            flush=True,
        )
    try:
        if args.no_confirm:
            print(
                "search done; confirm with: "
                f"budgetnas confirm {config.study_name} --storage {config.storage}"
            )
            return 0
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            print(_nothing_trained(study, config))
            return 1
        results = confirm_study(
            study,
            artifact_store(config.artifacts),
            top_k=args.top_k,
            seeds=args.seeds,
            data_dir=config.data_dir,
            device=check_device(config.device),
            progress=sys.stderr.isatty(),
            deadline=config.deadline(),
            precision=config.precision,
            workers=config.workers,
        )
        return _print_selection(study, results, args.storage)
    finally:
        print(f"elapsed {clock(time.monotonic() - started)}")


def _nothing_trained(study: optuna.Study, config: SearchConfig) -> str:
    """Why a search ended with no completed trial, and what to change."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL))
    budget_count = sum(map(over_budget, trials))
    cap_count = sum(map(over_cap, trials))
    if budget_count or cap_count:
        return (
            f"no candidate fits: of {len(trials)} trials, {budget_count} were over the budget of "
            f"{config.budget:,} parameters and {cap_count} over the caps of {config.mac_cap:,} MACs "
            f"or {config.activation_cap:,} activations; raise --budget, --max-macs or "
            "--max-activations, or run more --trials"
        )
    return (
        f"no trial completed: all {len(trials)} were pruned or failed (see the lines above); "
        "run more --trials (same command) or another --pruner"
    )


def _print_selection(study: optuna.Study, results, storage: str) -> int:
    if results:
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
        max_macs=settings.get("max_macs"),
        max_activations=settings.get("max_activations"),
        heartbeat=args.heartbeat,
        precision=args.precision or settings.get("precision", "auto"),
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
    check_precision(device, args.precision)
    study = _existing_study(args)
    results = confirm_study(
        study,
        args.artifacts,  # a path: confirm_study creates the folder only after its checks
        top_k=args.top_k,
        seeds=args.seeds,
        data_dir=args.data_dir,
        device=device,
        progress=sys.stderr.isatty() and args.workers == 1,
        precision=args.precision,
        workers=args.workers,
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
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; pass a file name")
    print(f"wrote {write_report(study, args.out)}")
    return 0


def cmd_bench_fidelity(args: argparse.Namespace) -> int:

    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        raise UsageError(
            f"--budgets takes integers separated by commas, got {args.budgets!r}"
        ) from None
    out = Path(args.out)
    _check_folder_writable(out, "--out")
    started = time.monotonic()
    records = run_fidelity_study(
        out,
        candidates=args.candidates,
        budgets=budgets,
        workers=args.workers,
        data_dir=args.data_dir,
    )
    print_fidelity_table(records)
    print()
    print_family_table(records)
    print(f"elapsed {clock(time.monotonic() - started)}")
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:

    run_bench_search(
        args.out,
        minutes=args.minutes,
        budget=args.budget,
        epochs=args.epochs,
        target=args.target,
        data_dir=args.data_dir,
        device=args.device,
        seed=args.seed,
        train_subset=args.train_subset,
    )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:

    serve(args.storage, args.artifacts, host=args.host, port=args.port)
    return 0


def cmd_check(args: argparse.Namespace) -> int:

    inspection, verdicts = check(
        args.target, budget=args.budget, require=args.require, forbid=args.forbid
    )
    print(render(inspection, verdicts))
    return 0 if all(v.passed for v in verdicts) else 1


def cmd_train(args: argparse.Namespace) -> int:

    target = load_target(args.target)
    device = check_device(args.device)
    check_precision(device, args.precision)
    if target.spec is not None:  # before anything is built: a net too large to train ends here
        check_memory(target.spec, min(Recipe().batch_size, args.train_subset or 60_000), device)
    inspection = inspect_target(target)
    if args.save:
        _check_writable(Path(args.save), args.force, own=not target.is_spec)
    try:
        fit, test = confirm_data(args.data_dir, device, train_subset=args.train_subset)
    except ValueError as error:  # --train-subset larger than the training set
        raise UsageError(f"--train-subset: {error}; pass a smaller one") from None
    recipe = Recipe(epochs=args.epochs)
    seeds = list(range(args.seed, args.seed + args.seeds))
    rf = "unknown" if inspection.receptive_field is None else inspection.receptive_field
    print(
        f"training {target.name}: {inspection.params:,} params, RF {rf}, "
        f"{inspection.macs:,} MACs, {len(fit):,} training images, {args.epochs} epochs, "
        f"{_seeds_text(seeds)}, {device}",
        flush=True,
    )

    def on_epoch(stats) -> None:
        print(
            f"{stats.epoch:>5}  {stats.train_loss:>10.4f}  {stats.accuracy:>7.2f}  {stats.seconds:>7.1f}",
            flush=True,
        )

    results = []
    for seed in seeds:
        if len(seeds) > 1:
            print(f"seed {seed}", flush=True)
        print(f"{'epoch':>5}  {'train loss':>10}  {'test %':>7}  {'seconds':>7}", flush=True)
        torch.manual_seed(seed)  # the init, as the search and confirm seed it
        result = train(
            target.build(),
            fit,
            test,
            recipe,
            seed=seed,
            device=device,
            on_epoch=on_epoch,
            progress=sys.stderr.isatty(),
            precision=args.precision,
        )
        print(
            f"final-epoch test accuracy: {result.accuracy:.2f}% (seed {seed}, {args.epochs} "
            f"epochs, {result.seconds:.0f} s on {result.device}, {result.precision})",
            flush=True,
        )
        results.append(result)
    accuracies = [r.accuracy for r in results]
    mean = sum(accuracies) / len(accuracies)
    if len(seeds) > 1:
        print(
            f"{len(seeds)} seeds: mean {mean:.2f}%, min {min(accuracies):.2f}% "
            "(final-epoch test accuracy of each run)"
        )
    if args.save:
        # Ship the seed closest to the median, as confirm does: representative, not lucky.
        median = sorted(range(len(seeds)), key=lambda i: accuracies[i])[(len(seeds) - 1) // 2]
        metrics = {
            "test_accuracy": accuracies,
            "test_accuracy_mean": round(mean, 4),
            "test_accuracy_min": min(accuracies),
            "seeds": seeds,
            "weights_seed": seeds[median],
            "weights_test_accuracy": accuracies[median],
            "epochs": args.epochs,
            "params": inspection.params,
            "macs": inspection.macs,
            "train_subset": args.train_subset,
        }
        origin = (
            f"Trained by '{_train_command(args)}' with the default recipe; "
            f"weights of seed {seeds[median]}."
        )
        _save_trained(target, args, results[median].state_dict, metrics, origin)
    return 0


def _seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _train_command(args: argparse.Namespace) -> str:
    """The 'budgetnas train' command line that reproduces a training, for its export."""
    argv = ["budgetnas", "train", args.target, "--epochs", str(args.epochs)]
    if args.seed:
        argv += ["--seed", str(args.seed)]
    if args.seeds > 1:
        argv += ["--seeds", str(args.seeds)]
    if args.train_subset:
        argv += ["--train-subset", str(args.train_subset)]
    return shlex.join(argv)


def _save_trained(target, args: argparse.Namespace, state_dict, metrics, origin) -> None:
    if target.is_spec:
        path = write_export(
            target.spec,
            args.save,
            "--save",
            state_dict=state_dict,
            metrics=metrics,
            origin=origin,
            force=args.force,
        )
        print(f"wrote {path} and {path.with_suffix('.pt')}")
        return
    loader, copy, weights = save_own_model(
        target, args.save, state_dict=state_dict, metrics=metrics, origin=origin, force=args.force
    )
    print(f"wrote {loader} (load() and METRICS), {copy} (your source) and {weights}")


def _check_writable(path: Path, force: bool, own: bool = False) -> None:
    """Refuse an export target before hours of training, not after."""
    if path.suffix != ".py" or not path.stem.isidentifier():
        raise UsageError(f"--save must be a PATH.py with an importable module name, got {path}")
    # The export writes the module and its weights; a module of yours also its source.
    for target in own_model_files(path) if own else (path, path.with_suffix(".pt")):
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
    entry()
