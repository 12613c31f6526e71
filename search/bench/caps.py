"""What the compute caps cost in accuracy: capped candidates trained again without them.

The sampler scales each candidate to the widest net within ``fill`` x budget parameters
and both compute caps (``search.study.sampler``). Where a cap binds, the net leaves part
of its budget unused and trains faster for it. This takes the sampled trials of a study
that trained to the epoch cap with a cap binding, rebuilds each from its own sampled
choices with the caps lifted, and trains both nets again with the study's recipe, split
and seed: the validation accuracy and seconds per epoch of each, side by side.

    python -m search.bench.caps results/bench_pair_seed20/bench_search.db ...

The capped and the lifted net of a trial train at the same time, one thread each, as a
two-core search's workers do, so that their seconds per epoch compare.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.engine.data import search_data
from search.engine.train import train
from search.study.sampler import sample_architecture, search_recipe
from search.study.storage import open_storage
from space import Spec, analyse, build, normalise

NO_CAP = 10**12
SIDE_BY_SIDE = 2  # trainings at a time, one thread each


@dataclass(frozen=True)
class CapCost:
    """One candidate as the search trained it under its caps, and with them lifted."""

    study: str
    trial: int
    capped_params: int
    capped_macs: int
    capped_val: float
    capped_epoch_s: float
    lifted_params: int
    lifted_macs: int
    lifted_val: float
    lifted_epoch_s: float


def resampled(trial: FrozenTrial, budget: int, max_macs: int, max_activations: int) -> Spec:
    """The trial's candidate from its own sampled choices, under the caps given."""
    fixed = optuna.trial.FixedTrial(trial.params)
    return sample_architecture(fixed, budget, max_macs, max_activations)


def capped_trials(study: optuna.Study) -> list[tuple[FrozenTrial, Spec]]:
    """The sampled trials trained to the epoch cap that a compute cap made smaller, each
    with its spec as the caps lifted would have made it."""
    settings = study.user_attrs["settings"]
    budget, caps = settings["budget"], (settings["max_macs"], settings["max_activations"])
    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("origin", "sampled") != "sampled":
            continue  # transferred or warm-started nets were not sampled under the caps
        try:
            same = normalise(resampled(trial, budget, *caps)) == trial.user_attrs["spec"]
        except (ValueError, KeyError):  # sampled from an earlier version of the space
            continue
        spec = resampled(trial, budget, NO_CAP, NO_CAP)
        if same and analyse(normalise(spec)).params > trial.user_attrs["params"]:
            found.append((trial, spec))
    return found


def _train(job: tuple[dict, int, Spec, str | None]) -> tuple[float, float]:
    settings, number, spec, data_dir = job
    torch.set_num_threads(1)
    fit, validation = search_data(
        data_dir, "cpu", settings["val_size"], settings["seed"], settings["train_subset"]
    )
    seed = settings["seed"] + number  # the search's own seed for this trial
    torch.manual_seed(seed)
    result = train(build(spec), fit, validation, search_recipe(settings["epochs"]), seed=seed)
    return result.accuracy, statistics.fmean(epoch.seconds for epoch in result.epochs)


def cap_costs(storages: list[str], data_dir: str | None = None) -> list[CapCost]:
    """Every capped trial of every study in ``storages`` (SQLite paths or URLs), trained
    again with its caps lifted."""
    found = []
    for url in storages:
        storage = open_storage(url if "://" in url else f"sqlite:///{url}", heartbeat_interval=None)
        for name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            settings = study.user_attrs["settings"]
            found += [(name, settings, trial, spec) for trial, spec in capped_trials(study)]
    jobs = [
        (settings, trial.number, version, data_dir)
        for _, settings, trial, spec in found
        for version in (trial.user_attrs["spec"], spec)  # capped, lifted: trained together
    ]
    with multiprocessing.get_context("spawn").Pool(SIDE_BY_SIDE) as pool:
        results = pool.map(_train, jobs, chunksize=1)
    costs = []
    for i, (name, _, trial, spec) in enumerate(found):
        (capped_val, capped_s), (lifted_val, lifted_s) = results[2 * i : 2 * i + 2]
        capped, lifted = analyse(normalise(trial.user_attrs["spec"])), analyse(normalise(spec))
        costs.append(
            CapCost(
                name,
                trial.number,
                capped.params,
                capped.macs,
                capped_val,
                capped_s,
                lifted.params,
                lifted.macs,
                lifted_val,
                lifted_s,
            )
        )
    return costs


def print_costs(costs: list[CapCost]) -> None:
    print(
        "study | trial | capped: params, M MACs, val %, s/epoch | lifted: params, M MACs, "
        "val %, s/epoch | val gain (points) | time per epoch"
    )
    print("---|---:|---|---|---:|---:")
    for c in costs:
        print(
            f"{c.study} | {c.trial} | {c.capped_params:,}, {c.capped_macs / 1e6:.2f}, "
            f"{c.capped_val:.2f}, {c.capped_epoch_s:.1f} | {c.lifted_params:,}, "
            f"{c.lifted_macs / 1e6:.2f}, {c.lifted_val:.2f}, {c.lifted_epoch_s:.1f} | "
            f"{c.lifted_val - c.capped_val:+.2f} | {c.lifted_epoch_s / c.capped_epoch_s:.2f}x"
        )
    if costs:
        gains = [c.lifted_val - c.capped_val for c in costs]
        times = [c.lifted_epoch_s / c.capped_epoch_s for c in costs]
        print(
            f"\n{len(costs)} capped candidates: lifting the caps moved validation by a median "
            f"{statistics.median(gains):+.2f} points ({min(gains):+.2f} to {max(gains):+.2f}) "
            f"for {statistics.median(times):.2f}x the time per epoch"
        )


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print_costs(cap_costs(sys.argv[1:]))
