"""Which short training ranks candidates like the full one: the evidence behind the search plan.

A search can only afford full trainings for a few candidates; the rest must be judged
on something cheaper. This study samples candidates from the search space (no warm
start, no reference nets), trains each at every cheap fidelity and at the full cap
(15 epochs on the 50k fit split, scored on the 10k validation split), and reports how
well each fidelity's ranking agrees with the full one (Spearman's rho) against what
it costs. Every fidelity is a training of its own with its schedule fitted to it (a
complete OneCycle), except the ``epoch k of 15`` rows: those read the full run's
validation accuracy part-way, which is what a pruner watching the full run sees.

Results go to a JSON-lines file, one line per (candidate, fidelity), and the study
resumes from it: a rerun skips what is already measured.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
import torch

from search.engine.data import Split, search_data
from search.engine.train import EpochStats, NonFiniteLoss, train
from search.results.tables import spearman
from search.study.sampler import default_max_macs, sample_architecture, search_recipe
from space import analyse, build, normalise

FULL_EPOCHS = 15


@dataclass(frozen=True)
class Fidelity:
    """A short training: ``epochs`` complete epochs over the first ``images`` of the fit split."""

    name: str
    epochs: int
    images: int | None = None  # None: the whole fit split

    def cost(self, fit_size: int) -> float:
        """Epochs of the full fit split this fidelity trains for."""
        return self.epochs * (self.images or fit_size) / fit_size


FIDELITIES = (
    Fidelity("1 epoch, 10k images", 1, 10_000),
    Fidelity("1 epoch, 50k images", 1),
    Fidelity("2 epochs, 25k images", 2, 25_000),
    Fidelity("3 epochs, 50k images", 3),
)
FULL = Fidelity(f"{FULL_EPOCHS} epochs, 50k images (full)", FULL_EPOCHS)
SNAPSHOTS = (1, 3, 5)  # epochs of the full run read part-way, as a pruner would


def sample_candidates(
    count: int, budgets: list[int], seed: int = 0, max_activations: int | None = None
) -> list[dict[str, Any]]:
    """``count`` candidates drawn at random from the search space, alternating budgets.

    Each comes with the space's parameters, its spec and its exact counts; the same
    arguments always give the same candidates, so a resumed study measures the same ones.
    ``max_activations`` overrides the space's activation cap (the default: its own).
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    candidates = []
    for index in range(count):
        budget = budgets[index % len(budgets)]
        trial = study.ask()
        spec = normalise(sample_architecture(trial, budget, max_activations=max_activations))
        study.tell(trial, 0.0)
        analysis = analyse(spec)
        candidates.append(
            {
                "candidate": index,
                "budget": budget,
                "max_macs": default_max_macs(budget),
                "space": trial.params,
                "spec": spec,
                "params": analysis.params,
                "macs": analysis.macs,
                "activations": analysis.activations,
            }
        )
    return candidates


def frozen_candidates(out: Path, count: int, budgets: list[int], seed: int) -> list[dict]:
    """The study's candidates, sampled once and kept beside ``out`` (``.candidates.json``),
    so that a resumed study measures the same networks even after the space has changed
    (shaping the space from this study's findings is what it is for)."""
    path = out.with_suffix(".candidates.json")
    if path.exists():
        pool = json.loads(path.read_text())
        if len(pool) >= count:
            return pool[:count]
    pool = sample_candidates(count, budgets, seed)
    path.write_text(json.dumps(pool, indent=1) + "\n")
    return pool


def measure(candidate: dict[str, Any], fidelity: Fidelity, fit: Split, validation: Split) -> dict:
    """Train ``candidate`` afresh at ``fidelity`` (seed 0) and return its record."""
    images = fidelity.images or len(fit)
    subset = Split(fit.images[:images], fit.labels[:images])
    curve: list[float] = []

    def on_epoch(stats: EpochStats) -> None:
        curve.append(stats.accuracy)

    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        accuracy = train(
            build(candidate["spec"]),
            subset,
            validation,
            search_recipe(fidelity.epochs),
            seed=0,
            on_epoch=on_epoch,
        ).accuracy
    except NonFiniteLoss:  # it failed to train: it ranks last, as chance would
        accuracy, curve = 10.0, curve + [10.0] * (fidelity.epochs - len(curve))
    return {
        **candidate,
        "fidelity": fidelity.name,
        "epochs": fidelity.epochs,
        "images": images,
        "val_accuracy": accuracy,
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 2),
    }


def done_pairs(path: Path) -> set[tuple[int, str]]:
    return {(r["candidate"], r["fidelity"]) for r in read_records(path)}


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _worker(
    candidates: list[dict], path: str, data_dir: str | None, threads: int, lock: Any
) -> None:
    torch.set_num_threads(threads)
    fit, validation = search_data(data_dir, "cpu")
    for candidate in candidates:
        for fidelity in (*FIDELITIES, FULL):
            with lock:
                if (candidate["candidate"], fidelity.name) in done_pairs(Path(path)):
                    continue
            record = measure(candidate, fidelity, fit, validation)
            with lock, open(path, "a") as file:
                file.write(json.dumps(record) + "\n")
            print(
                f"candidate {candidate['candidate']:>2} ({candidate['params']:,} params, "
                f"{candidate['macs'] / 1e6:.2f} M MACs) {fidelity.name}: "
                f"val {record['val_accuracy']:.2f}% in {record['seconds']:.0f} s",
                flush=True,
            )


def run_fidelity_study(
    out: str | Path,
    *,
    candidates: int = 24,
    budgets: list[int] | None = None,
    workers: int = 2,
    data_dir: str | None = None,
    seed: int = 0,
) -> list[dict]:
    """Measure every fidelity for ``candidates`` sampled candidates, ``workers`` processes
    of one thread each side by side, appending to ``out``; returns all its records."""
    path = Path(out)
    search_data(data_dir, "cpu")  # fail on missing data before spawning anything
    pool = frozen_candidates(path, candidates, budgets or [4000, 8000], seed)
    print(
        f"fidelity study: {len(pool)} candidates x {len(FIDELITIES) + 1} trainings, "
        f"{len(done_pairs(path))} already in {path}",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    lock = context.Lock()
    threads = max(1, torch.get_num_threads() // workers)
    processes = [
        context.Process(target=_worker, args=(pool[w::workers], str(path), data_dir, threads, lock))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return read_records(path)


def fidelity_table(records: list[dict]) -> list[dict]:
    """Per fidelity: candidates measured, mean seconds, and Spearman's rho with the full
    run's final validation accuracy, over all candidates and per budget."""
    by_candidate: dict[int, dict[str, dict]] = {}
    for record in records:
        by_candidate.setdefault(record["candidate"], {})[record["fidelity"]] = record
    complete = [c for c in by_candidate.values() if FULL.name in c]
    rows = []
    views = [(f.name, lambda c, f=f: c.get(f.name)) for f in FIDELITIES]
    views += [
        (
            f"epoch {k} of the {FULL_EPOCHS}-epoch run",
            lambda c, k=k: {**c[FULL.name], "val_accuracy": c[FULL.name]["curve"][k - 1]},
        )
        for k in SNAPSHOTS
    ]
    for name, view in [*views, (FULL.name, lambda c: c[FULL.name])]:
        pairs = [(view(c), c[FULL.name]) for c in complete if view(c) is not None]
        if not pairs:
            continue
        row: dict[str, Any] = {"fidelity": name, "candidates": len(pairs)}
        full_seconds = statistics.fmean(full["seconds"] for _, full in pairs)
        if name.startswith("epoch "):
            k = int(name.split()[1])
            row["seconds"] = full_seconds * k / FULL_EPOCHS
        else:
            row["seconds"] = statistics.fmean(short["seconds"] for short, _ in pairs)
        for label, keep in [
            ("all", None),
            *[(str(b), b) for b in sorted({c["budget"] for _, c in pairs})],
        ]:
            chosen = [(s, f) for s, f in pairs if keep is None or f["budget"] == keep]
            row[f"rho_{label}"] = (
                spearman(
                    [s["val_accuracy"] for s, _ in chosen], [f["val_accuracy"] for _, f in chosen]
                )
                if len(chosen) >= 3
                else None
            )
        rows.append(row)
    return rows


def print_fidelity_table(records: list[dict], out: TextIO | None = None) -> None:
    rows = fidelity_table(records)
    if not rows:
        print("no candidate has its full training measured yet", file=out)
        return
    budgets = [key[4:] for key in rows[0] if key.startswith("rho_") and key != "rho_all"]
    header = f"{'fidelity':<34} {'n':>3} {'seconds':>8} {'rho all':>8}" + "".join(
        f" {'rho ' + b:>9}" for b in budgets
    )
    print(header, file=out)
    for row in rows:
        cells = [row.get(f"rho_{b}") for b in ["all", *budgets]]
        rhos = "".join(
            f" {'-' if r is None else f'{r:.2f}':>{9 if i else 8}}" for i, r in enumerate(cells)
        )
        print(
            f"{row['fidelity']:<34} {row['candidates']:>3} {row['seconds']:>8.0f}{rhos}", file=out
        )


FAMILY_KEYS = ("family", "downsample", "bias", "head", "squeeze", "depth1", "depth2", "depth3")


def family_table(records: list[dict]) -> list[dict]:
    """Mean full-cap validation accuracy of the measured candidates for each value of each
    categorical choice of the space, per budget: which kinds of network win."""
    full = [r for r in records if r["fidelity"] == FULL.name]
    rows = []
    for key in FAMILY_KEYS:
        # A choice the space no longer makes is missing from candidates drawn since.
        for value in sorted({r["space"][key] for r in full if key in r["space"]}, key=str):
            row: dict[str, Any] = {"choice": f"{key}={value}"}
            for budget in sorted({r["budget"] for r in full}):
                chosen = [
                    r["val_accuracy"]
                    for r in full
                    if r["budget"] == budget and r["space"].get(key) == value
                ]
                row[budget] = (statistics.fmean(chosen), len(chosen)) if chosen else None
            rows.append(row)
    return rows


def print_family_table(records: list[dict], out: TextIO | None = None) -> None:
    rows = family_table(records)
    if not rows:
        return
    budgets = [key for key in rows[0] if key != "choice"]
    print(f"{'choice':<22}" + "".join(f" {f'val % at {b:,} (n)':>20}" for b in budgets), file=out)
    for row in rows:
        cells = "".join(
            f" {'-' if row[b] is None else f'{row[b][0]:.2f} ({row[b][1]})':>20}" for b in budgets
        )
        print(f"{row['choice']:<22}{cells}", file=out)
