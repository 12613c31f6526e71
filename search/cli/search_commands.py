"""``budgetnas search``, ``worker`` and ``confirm``: run a search, join one, confirm and select."""

from __future__ import annotations

import argparse
import random
import sys
import time

import optuna
from optuna.trial import TrialState

from search.cli.common import (
    _add_data,
    _add_precision,
    _add_storage,
    _existing_study,
    _percentage,
    _positive_int,
    _table,
)
from search.errors import UsageError
from search.results.tables import over_budget, over_cap
from search.study.config import PRUNERS, SearchConfig, check_device, check_precision
from search.study.confirm import confirm_study, selected
from search.study.run import clock, finished_count, run_search, run_worker
from search.study.sampler import (
    ACTIVATIONS_PER_PARAM,
    MACS_PER_PARAM,
    MIN_MAX_ACTIVATIONS,
    MIN_MAX_MACS,
)
from search.study.storage import artifact_store


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``search``, ``worker`` and ``confirm`` commands, in the order ``--help`` lists them."""
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
        f"untrained (default: {MACS_PER_PARAM} x --budget, at least {MIN_MAX_MACS:,})",
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
        "--no-transfer",
        action="store_true",
        help="start from scratch: do not first try the shipped models and the other studies' "
        "winners, rescaled to --budget (default: try them first, in a new study)",
    )
    search.add_argument(
        "--top-k", type=_positive_int, default=3, help="trials to confirm after the search"
    )
    search.add_argument("--seeds", type=_positive_int, default=3, help="seeds per confirmation")
    search.add_argument("--no-confirm", action="store_true", help="skip confirmation and selection")
    search.add_argument(
        "--use-all-time",
        action="store_true",
        help="search until --timeout or --trials for the best net, then confirm (default: stop "
        "at the first confirmed net that clears --target)",
    )
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
        transfer=not args.no_transfer,
        confirm_seeds=0 if args.no_confirm else args.seeds,
        stop_when_answered=not args.use_all_time,
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
    if finished < config.trials and config.confirms_answers and selected(study):
        print(
            f"answered at {finished} of {config.trials} trials: a confirmed net clears the "
            "target (--use-all-time searches on for the best one)",
            flush=True,
        )
    elif finished < config.trials:
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
            started=config.run_started,
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
