"""``budgetnas bench``, ``bench-fidelity`` and ``bench-search``: the benchmarks and the
evidence behind the design."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from search.bench.arms import ARMS, DEFAULT_ARMS, run_bench_search
from search.bench.fidelity import print_family_table, print_fidelity_table, run_fidelity_study
from search.bench.speed import DEFAULT_MODELS, DEFAULT_STEPS, benchmark
from search.bench.step import DEFAULT_ROUNDS, DEFAULT_THREADS, step_benchmark
from search.cli.common import (
    _add_data,
    _check_folder_writable,
    _integers,
    _percentage,
    _positive_int,
)
from search.errors import UsageError
from search.study.run import clock


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``bench``, ``bench-fidelity`` and ``bench-search`` commands."""
    bench = commands.add_parser(
        "bench",
        help="training speed: the engine against a DataLoader pipeline, or (--step) the"
        " fast step against plain PyTorch",
    )
    add_bench_arguments(bench)
    bench.set_defaults(run=cmd_bench)

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
    race.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"comma-separated arms to run side by side, from {', '.join(ARMS)}: "
        "transfer is the search as shipped, budgetnas the same from scratch "
        "(default: %(default)s)",
    )
    _add_data(race)
    race.set_defaults(run=cmd_bench_search)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``budgetnas bench`` options (including --data-dir and --device)."""
    parser.add_argument(
        "--steps",
        type=int,
        help=f"timed steps per configuration (default: {DEFAULT_STEPS['cpu']} on CPU,"
        f" {DEFAULT_STEPS['cuda']} on CUDA; 100 with --step)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--data-dir", help="folder with MNIST/raw/ (default: $BUDGETNAS_DATA or ./data)"
    )
    parser.add_argument(
        "--models",
        help="comma-separated zoo models; the first also gets the search throughput"
        f" (default: {','.join(DEFAULT_MODELS)}; with --step, reference nets or export .py"
        " files, default: ref7676 and the shipped 4k and 8k nets)",
    )
    parser.add_argument(
        "--step",
        action="store_true",
        help="time the CPU training step instead: the engine's fast path against plain"
        " PyTorch, per net and thread count, with the FLOP bound (default: off)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="with --step: also time N candidates sampled with the activation cap lifted, and"
        " rank their seconds per epoch by MACs and by activations (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="with --step: alternating timings of each path per net and thread count; the"
        " median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        default=",".join(map(str, DEFAULT_THREADS)),
        help="with --step: comma-separated thread counts (default: %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, help="parallel trial processes (default: the number of cores)"
    )
    parser.add_argument(
        "--out", help="also write the numbers to this JSON file (default: print only)"
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed ``add_bench_arguments`` options; raises UsageError on bad input."""
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.step:
        result = _step(args)
    else:
        result = benchmark(
            steps=args.steps,
            device=args.device,
            data_dir=args.data_dir,
            models=(args.models or ",".join(DEFAULT_MODELS)).split(","),
            workers=args.workers,
        )
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _step(args: argparse.Namespace) -> dict:
    if args.device not in ("auto", "cpu"):
        raise UsageError("--step times the CPU step; leave out --device (or pass cpu)")
    threads = _integers(args.threads, "--threads")
    nets = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    if args.candidates < 0:
        raise UsageError(f"--candidates must be 0 or more (got {args.candidates})")
    options = {"steps": args.steps} if args.steps is not None else {}
    return step_benchmark(
        *([nets] if nets else []),
        data_dir=args.data_dir,
        threads=threads,
        rounds=args.rounds,
        candidates=args.candidates,
        **options,
    )


def cmd_bench_fidelity(args: argparse.Namespace) -> int:

    budgets = _integers(args.budgets, "--budgets")
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
        arms=tuple(args.arms.split(",")),
    )
    return 0
