"""The search benchmark's verdict over several runs of ``budgetnas bench-search``.

One run says little: a 30-minute arm trains a handful of candidates to the cap, and
which ones it draws decides its best. Over several runs (one folder each), per arm: the
time to the first full training at or above the target, the time to reach the
conventional arm's final best of the same run, and the final best, each with its
median and range.

    python -m search.bench.verdict results/bench_fast_seed10 results/bench_fast_seed11 ...
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import optuna

from search.bench.arms import ARMS, summarise
from search.study.storage import open_storage

BASELINE = "conventional"  # the arm whose final best the other must reach


def time_to(summary: dict, accuracy: float) -> float | None:
    """Seconds until the arm's best full training first reached ``accuracy``; None: never."""
    for seconds, best in zip(summary["seconds"], summary["best_so_far"], strict=True):
        if best >= accuracy:
            return seconds
    return None


def run_rows(folder: Path, minutes: float, target: float) -> list[dict]:
    """One row per arm of the run in ``folder``."""
    storage = open_storage(f"sqlite:///{folder / 'bench_search.db'}", heartbeat_interval=None)
    summaries = {}
    for name in optuna.get_all_study_names(storage):
        arm = name.split("-")[1]
        if arm in ARMS:
            summaries[arm] = summarise(
                optuna.load_study(study_name=name, storage=storage), target, minutes * 60
            )
    if BASELINE not in summaries:
        raise SystemExit(f"{folder}: no {BASELINE} arm, whose final best the others are timed to")
    baseline = summaries[BASELINE]["best"]
    return [
        {
            "run": folder.name,
            "arm": arm,
            "trials": summary["trials"],
            "complete": summary["complete"],
            "best": summary["best"],
            "to_target": summary["time_to_target_s"],
            "to_baseline_best": time_to(summary, baseline),
        }
        for arm, summary in summaries.items()
    ]


def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.1f}"


def _spread(values: list[float | None], scale: float = 1 / 60) -> str:
    """Median and range; a run that never got there counts as later than any that did."""
    reached = sorted(v * scale for v in values if v is not None)
    never = len(values) - len(reached)
    if not reached:
        return f"never ({never} of {len(values)})"
    ordered = reached + [float("inf")] * never
    median = statistics.median(ordered)
    text = "never" if median == float("inf") else f"{median:.1f}"
    return f"{text} ({reached[0]:.1f}-{reached[-1]:.1f}{f', never in {never}' if never else ''})"


def main(folders: list[str], minutes: float = 30, target: float = 99.4) -> None:
    rows = [row for folder in folders for row in run_rows(Path(folder), minutes, target)]
    print(
        f"run | arm | trials | trained to the cap | final best val % | minutes to >= {target}% | minutes to the conventional arm's final best"
    )
    print("---|---|---:|---:|---:|---:|---:")
    for row in rows:
        print(
            f"{row['run']} | {row['arm']} | {row['trials']} | {row['complete']} | {row['best']:.2f} | "
            f"{_minutes(row['to_target'])} | {_minutes(row['to_baseline_best'])}"
        )
    print()
    print(
        f"arm | runs | final best val %: median (range) | minutes to >= {target}%: median (range) | minutes to the conventional arm's final best: median (range)"
    )
    print("---|---:|---|---|---")
    for arm in ARMS:
        mine = [row for row in rows if row["arm"] == arm]
        if not mine:
            continue
        bests = [row["best"] for row in mine]
        print(
            f"{arm} | {len(mine)} | {statistics.median(bests):.2f} ({min(bests):.2f}-{max(bests):.2f}) | "
            f"{_spread([row['to_target'] for row in mine])} | "
            f"{_spread([row['to_baseline_best'] for row in mine])}"
        )


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main(sys.argv[1:])
