"""The search benchmark: budgetnas's default search against the conventional one, same clock.

Arm "budgetnas" is ``budgetnas search`` from scratch: the rungs of ``search.study.plan``
under ASHA's promotion. Arm "conventional" is what users write from Optuna's PyTorch
example: TPE with a median pruner, one full-length training per trial with the same
recipe, validation accuracy reported every epoch. Both sample the same space under the
same budget and compute cap from scratch (no transfer, no warm start), so the difference
is the search plan alone. Arm "transfer" is ``budgetnas search`` as shipped: the
budgetnas arm that first trains the nets earlier searches found (``search.study.transfer``;
in the benchmark's fresh storage, the shipped models). Two arms run at a time by default,
one core each on a CPU (or sharing one GPU), for the same wall-clock time, each into its
own study of one SQLite file that the dashboard opens.

The result is a plotly HTML page of the best full-cap validation accuracy against wall
time for both arms, and for each arm the time to its first candidate at or above the
target.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path
from typing import TextIO

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import TrialState

from search.errors import UsageError
from search.study.config import SearchConfig
from search.study.run import clock, create_or_resume, run_search
from search.study.signals import Terminated, handle_stop_signals
from search.study.storage import open_storage

# Each arm's pruner, and whether it first trains the nets earlier searches found.
ARMS = {
    "budgetnas": ("rungs", False),
    "conventional": ("median", False),
    "transfer": ("rungs", True),
}
DEFAULT_ARMS = ("budgetnas", "conventional")
STARTED = "bench_started"  # study user attribute: time.time() when its arm started


class _LinePrefix:
    """An arm's stdout: each line starts with the arm's name, so that the two arms'
    progress lines, interleaved in one log, say whose they are."""

    def __init__(self, stream: TextIO, prefix: str):
        self.stream, self.prefix, self.line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def _arm(config: SearchConfig, threads: int) -> None:
    """One arm in its own process. SIGTERM at the end of the wall time fails its running
    trial and ends it."""
    handle_stop_signals()
    sys.stdout = _LinePrefix(sys.stdout, f"[{multiprocessing.current_process().name}] ")
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_search(config)
    except Terminated:
        pass


def run_bench_search(
    out_dir: str | Path,
    *,
    minutes: float = 45,
    budget: int = 8000,
    epochs: int = 15,
    target: float = 99.4,
    data_dir: str | None = None,
    device: str = "auto",
    seed: int = 0,
    train_subset: int | None = None,
    arms: tuple[str, ...] | list[str] = DEFAULT_ARMS,
    out: TextIO | None = None,
) -> dict[str, dict]:
    """Run ``arms`` side by side for ``minutes`` and write ``out_dir``/bench_search.db,
    .html and the arms' logs; returns each arm's summary (see ``summarise``)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        raise UsageError(f"--out {folder} is not a folder; create it or pass another")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms or len(set(arms)) < len(arms):
        raise UsageError(
            f"--arms takes distinct names from {', '.join(ARMS)} (got {', '.join(arms) or 'none'})"
        )
    storage = f"sqlite:///{folder / 'bench_search.db'}"
    configs = {
        arm: SearchConfig(
            budget=budget,
            epochs=epochs,
            target=target,
            trials=100_000,  # the clock ends each arm, not a trial count
            study=f"bench-{arm}-{budget}p-{epochs}e",
            storage=storage,
            artifacts=str(folder / "artifacts"),
            data_dir=data_dir,
            device=device,
            seed=seed,
            timeout=minutes * 60,
            train_subset=train_subset,
            pruner=ARMS[arm][0],
            transfer=ARMS[arm][1],
        )
        for arm in arms
    }
    for config in configs.values():
        config.check()
        # Created here, one after the other: two processes creating one SQLite schema race.
        # Both arms' clocks start now, before their processes start, so the curves share
        # a clock and the arms' start-up counts against their time alike.
        study = create_or_resume(config)
        if STARTED not in study.user_attrs:
            study.set_user_attr(STARTED, time.time())
    threads = max(1, torch.get_num_threads() // len(configs))
    print(
        f"bench search: {', '.join(configs)} side by side for {minutes:g} min, "
        f"{threads} thread(s) each, budget {budget:,}, {epochs} epochs, into {storage}",
        file=out,
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_arm, args=(config, threads), name=arm)
        for arm, config in configs.items()
    ]
    for process in processes:
        process.start()
    # A one-training-per-trial arm would otherwise finish a training started just before
    # its --timeout long after it: the clock, not the trial, ends both arms.
    ends = time.monotonic() + minutes * 60
    for process in processes:
        process.join(timeout=max(0.0, ends - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
        process.join()
    summaries = {}
    for arm, config in configs.items():
        study = optuna.load_study(
            study_name=config.study_name, storage=open_storage(storage, heartbeat_interval=None)
        )
        summaries[arm] = summarise(study, target, minutes * 60)
        reached = summaries[arm]["time_to_target_s"]
        print(
            f"{arm:>12}: best val {summaries[arm]['best']:.2f}% "
            f"({summaries[arm]['complete']} complete of {summaries[arm]['trials']} trials); "
            f"first >= {target}% at {clock(reached) if reached is not None else 'never'}",
            file=out,
            flush=True,
        )
    write_figure(summaries, target, folder / "bench_search.html")
    print(f"wrote {folder / 'bench_search.html'}", file=out, flush=True)
    return summaries


def summarise(study: optuna.Study, target: float, seconds: float = float("inf")) -> dict:
    """Best full-cap validation accuracy against seconds since the arm started, over the
    trials completed within ``seconds`` of that start."""
    started = study.user_attrs[STARTED]
    complete = sorted(
        (
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.datetime_complete.timestamp() - started <= seconds
        ),
        key=lambda t: t.datetime_complete,
    )
    times, best_so_far, best = [], [], float("-inf")
    time_to_target = None
    for trial in complete:
        at = trial.datetime_complete.timestamp() - started
        best = max(best, trial.value)
        times.append(round(at, 1))
        best_so_far.append(best)
        if time_to_target is None and trial.value >= target:
            time_to_target = at
    return {
        "study": study.study_name,
        # Trials that ran: not the copy of a clock-stopped trial queued for a resume.
        "trials": sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)),
        "complete": len(complete),
        "best": best if complete else float("nan"),
        "seconds": times,
        "best_so_far": best_so_far,
        "time_to_target_s": time_to_target,
    }


def write_figure(summaries: dict[str, dict], target: float, path: Path) -> None:
    figure = go.Figure()
    for arm, summary in summaries.items():
        figure.add_scatter(
            name=f"{arm} ({summary['study']})",
            mode="lines+markers",
            line={"shape": "hv"},
            x=[s / 60 for s in summary["seconds"]],
            y=summary["best_so_far"],
        )
    figure.add_hline(y=target, line_dash="dot", annotation_text=f"target {target}%")
    figure.update_layout(
        title="Best full-cap validation accuracy against wall time",
        xaxis_title="minutes since the arm started",
        yaxis_title="best validation accuracy (%)",
    )
    figure.write_html(path, include_plotlyjs=True)
