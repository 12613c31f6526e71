"""budgetnas from Python: search, look at the trials, confirm, export and train.

The same steps as the ``budgetnas`` command, as plain functions for a notebook (Jupyter,
Colab) or a script. They run the very code the command runs, print the same progress
(a line per trial with an overall bar and ETA; per-epoch bars through ``tqdm.auto``,
widgets in a notebook when ipywidgets is installed) and raise exceptions instead of
exiting: ``search.errors.UsageError`` for bad input, ``search.engine.data.DataError`` for
missing or damaged MNIST files, ``space.SpecError`` for an invalid architecture.

::

    from search import api as budgetnas

    study = budgetnas.search(budget=8000, epochs=15, target=99.4, trials=50)
    budgetnas.trials(study)                       # a pandas DataFrame, one row per trial
    budgetnas.export(study, "models/mine.py")     # the winner: a module that needs only torch
    budgetnas.front(["sqlite:///a.db", "sqlite:///b.db"], target=99.4)  # how small, across searches
    budgetnas.train("ref7676", epochs=15)         # [final-epoch test accuracy]
    images, labels = budgetnas.mnist_test(8)      # test images as an exported net takes them

Studies live in an Optuna storage (``sqlite:///studies.db`` in the working folder by
default) and trained weights in an artifact folder (``artifacts``): calling ``search``
again with the same arguments resumes the study, ``load`` opens it in a later session,
and ``budgetnas dashboard`` shows it in the browser. MNIST is read from ``data_dir``,
else ``$BUDGETNAS_DATA``, else ``./data`` (downloaded there when torchvision is
installed).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from torch import nn

from search.engine.data import confirm_data
from search.engine.train import EpochStats, Recipe
from search.engine.train import train as train_model
from search.errors import UsageError
from search.own_model.target import load_target
from search.results.export import export_trial
from search.results.front import read_front
from search.results.tables import trial_counts, trial_origin
from search.study.config import SearchConfig, check_device
from search.study.confirm import Confirmation, confirm_study, confirmations, selected
from search.study.run import run_search
from search.study.storage import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, load_study, open_storage
from space import build, normalise

__all__ = [
    "Confirmation",
    "confirm",
    "export",
    "front",
    "load",
    "mnist_test",
    "search",
    "train",
    "trials",
]

# trials(): the user attributes worth a column, in this order (the rest, such as the spec,
# the recipe and the learning curves, are dicts: full=True keeps them).
TRIAL_COLUMNS = (
    "state",
    "val_accuracy",
    "params",
    "macs",
    "activations",
    "receptive_field",
    "epoch_seconds",
    "train_seconds",
    "test_mean",
    "test_min",
    "selected",
    "origin",
    "zoo",
    "pruned_reason",
    "fail_reason",
    "duration",
)


def search(
    budget: int = 8000,
    epochs: int = 15,
    target: float = 99.4,
    trials: int = 50,
    *,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    artifacts: str = DEFAULT_ARTIFACTS,
    data_dir: str | None = None,
    device: str = "auto",
    train_subset: int | None = None,
    val_size: int = 10_000,
    timeout: float | None = None,
    workers: int = 1,
    confirm: bool = True,
    top_k: int = 3,
    seeds: int = 3,
    use_all_time: bool = False,
    transfer: bool = True,
    warm_start: bool = False,
    pruner: str = "rungs",
    max_macs: int | None = None,
    max_activations: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> optuna.Study:
    """Search for the best network under ``budget`` parameters and ``epochs`` epochs
    (``budgetnas search``), then confirm the top trials on the test set.

    Creates the study (named ``mnist-{budget}p-{epochs}e`` unless ``study`` is given) or
    resumes it: trials already finished count toward ``trials``. Each trial prints a line
    as it finishes. With ``confirm``, the ``top_k`` best trials are then retrained on
    the full training set with ``seeds`` seeds and scored on the test set at the final
    epoch, until one clears ``target`` (the study's winner, which ``export`` writes).
    ``timeout`` (seconds) bounds the search and the confirmation together. The search
    stops at the first confirmed net that clears ``target`` (a trial likely to clear it is
    confirmed as soon as it finishes); ``use_all_time`` searches until ``timeout`` or
    ``trials`` for the best net instead, then confirms.

    ``train_subset`` trains on that many images for a quick look (the confirmation uses
    the same number); ``transfer`` first tries, in a new study, the shipped models and
    the winners of the other studies in ``storage``, rescaled to ``budget``, and weights
    the first draws' choices by how they ranked in those studies;
    ``warm_start`` first tries the reference networks that fit the
    budget; ``max_macs`` and ``max_activations`` cap a candidate's compute and time per
    epoch (defaults grow with the budget); ``progress`` shows per-epoch bars (with
    several ``workers``, one line per epoch instead). Returns the ``optuna.Study``.
    """
    config = SearchConfig(
        budget=budget,
        epochs=epochs,
        target=target,
        trials=trials,
        study=study,
        storage=storage,
        artifacts=artifacts,
        data_dir=data_dir,
        device=device,
        seed=seed,
        timeout=timeout,
        started_at=time.time(),
        train_subset=train_subset,
        val_size=val_size,
        pruner=pruner,
        max_macs=max_macs,
        max_activations=max_activations,
        warm_start=warm_start,
        transfer=transfer,
        confirm_seeds=seeds if confirm else 0,
        stop_when_answered=not use_all_time,
        estimate=True,
        workers=workers,
        progress_bars=progress,
        epoch_lines=not progress or workers > 1,  # bars are drawn only with one worker
    )
    config.check()  # bad input raises here, before the header
    print(
        f"study {config.study_name!r} in {config.storage}: budget {config.budget:,} params, "
        f"caps {config.mac_cap:,} MACs and {config.activation_cap:,} activations, "
        f"{config.epochs} epochs, target {config.target}%",
        flush=True,
    )
    with _quiet_optuna():
        result = run_search(config)
    recorded = result.user_attrs.get("settings", {}).get("target", target)
    if recorded != target:
        print(
            f"note: study {config.study_name!r} was created with target {recorded}%, which its "
            f"confirmation keeps using; pass study= a new name to search with target {target}%"
        )
    if not confirm:
        return result
    if not result.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        counts = ", ".join(f"{n} {what}" for what, n in trial_counts(result).items() if n)
        print(
            f"no trial completed ({counts}), so there is nothing to confirm: run more trials "
            "(search again with a larger trials= resumes the study) or raise budget, "
            "max_macs or max_activations"
        )
        return result
    # As many side-by-side seeds as workers: what the search kept time for.
    _confirm(
        result,
        top_k,
        seeds,
        artifacts,
        data_dir,
        device,
        progress,
        config.deadline(),
        workers,
        config.run_started,
    )
    return result


def load(study_name: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """An existing study, e.g. one a search from the command line wrote."""
    return load_study(open_storage(storage, must_exist=True, heartbeat_interval=None), study_name)


def trials(study: optuna.Study, *, full: bool = False) -> pd.DataFrame:
    """The study's trials as a DataFrame indexed by trial number (Optuna's
    ``trials_dataframe``, with budgetnas' figures as columns).

    Columns: ``state``; ``val_accuracy`` (validation %: a completed trial's final one, a
    pruned trial's last one); ``params`` and ``macs`` (parameters, multiply-accumulates
    per image); ``receptive_field``; ``epoch_seconds`` (mean seconds per epoch of the full
    training) and ``train_seconds``; ``test_mean``, ``test_min`` and ``selected`` for
    confirmed trials; ``origin`` (sampled, or the known net transfer queued);
    ``zoo`` (a warm-started reference net); ``pruned_reason`` and
    ``fail_reason``; ``duration``.
    ``full=True`` adds every other user attribute (spec, recipe, curves...) and Optuna's
    sampled parameters (``params_*``).

    ``trials(study).sort_values("val_accuracy", ascending=False)`` ranks them.
    """
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs")
    )
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS), index=pd.Index([], name="number"))
    # "value", or "value_<name>" once the study has a metric name (budgetnas names it).
    value = [c for c in frame.columns if c == "value" or c.startswith("value_")]
    frame = frame.set_index("number").rename(columns=dict.fromkeys(value, "val_accuracy"))
    frame.columns = [c.removeprefix("user_attrs_") for c in frame.columns]
    confirmed = confirmations(study)
    for column, field in (("test_mean", "mean"), ("test_min", "min")):
        values = [_get(confirmed, n, field) for n in frame.index]
        frame[column] = pd.Series(values, index=frame.index, dtype=float)  # NaN: unconfirmed
    frame["selected"] = [bool(_get(confirmed, n, "selected")) for n in frame.index]
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    frame["origin"] = [trial_origin(by_number[n]) for n in frame.index]
    for column in TRIAL_COLUMNS:
        if column not in frame.columns:  # an attribute no trial has yet
            frame[column] = None
    if full:
        rest = [c for c in frame.columns if c not in TRIAL_COLUMNS]
        return frame[[*TRIAL_COLUMNS, *rest]]
    return frame[list(TRIAL_COLUMNS)]


def _get(confirmed: Mapping[int, Confirmation], number: int, field: str) -> object:
    record = confirmed.get(int(number))
    return getattr(record, field) if record else None


def confirm(
    study: optuna.Study,
    top_k: int = 3,
    seeds: int = 3,
    *,
    artifacts: str = DEFAULT_ARTIFACTS,
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
    timeout: float | None = None,
    workers: int = 1,
) -> list[Confirmation]:
    """(Re)confirm the study's best trials (``budgetnas confirm``): retrain the ``top_k``
    best on the full training set with ``seeds`` seeds, score them on the test set at the
    final epoch, and stop at the first whose mean clears the study's target. Trials
    already confirmed with as many seeds are reused; trials that would not finish
    within ``timeout`` seconds are skipped. Returns the confirmations, best validation
    first: each has ``test_accuracy`` (per seed), ``mean``, ``min`` and ``selected``.
    ``workers`` seeds train side by side (processes splitting the CPU cores).
    """
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    return _confirm(study, top_k, seeds, artifacts, data_dir, device, progress, deadline, workers)


def _confirm(
    study: optuna.Study,
    top_k: int,
    seeds: int,
    artifacts: str,
    data_dir: str | None,
    device: str,
    progress: bool,
    deadline: float,
    workers: int,
    started: datetime | None = None,
) -> list[Confirmation]:
    results = confirm_study(
        study,
        artifacts,  # a path: confirm_study creates the folder only after its checks
        top_k=top_k,
        seeds=seeds,
        data_dir=data_dir,
        device=check_device(device),
        progress=progress,
        deadline=deadline,
        workers=workers,
        started=started,
    )
    winners = selected(study)
    if winners:
        best = winners[0]
        print(
            f"selected: trial {best.trial}, {best.params:,} params, mean test {best.mean:.2f}% "
            f"(min {best.min:.2f}%) over {len(best.seeds)} seed(s)"
        )
    else:
        print("no architecture cleared the target yet: run more trials or raise epochs")
    return results


def export(
    study: optuna.Study,
    out: str | Path,
    trial: int | None = None,
    artifacts: str = DEFAULT_ARTIFACTS,
    force: bool = False,
) -> Path:
    """Write a trial as a standalone module ``out`` (a ``.py`` file with an importable
    name) plus its weights beside it (``.pt``): the study's winner, or trial number
    ``trial``. The module needs only torch: ``import mine; net = mine.load()``.
    An existing file is refused unless ``force``. Returns the module's path.
    """
    if not Path(artifacts).is_dir():
        raise UsageError(
            f"no artifact folder at {artifacts}; pass artifacts= where the search stored weights"
        )
    return export_trial(study, FileSystemArtifactStore(artifacts), out, number=trial, force=force)


def front(
    storage: str | Sequence[str] = DEFAULT_STORAGE,
    *,
    references: Sequence[str | Path] = (),
    epochs: int | None = None,
    target: float | None = None,
) -> pd.DataFrame:
    """How small a net can be and still clear ``target``% (``budgetnas front``): every
    confirmed architecture of every study in ``storage`` (one URL or several, each read
    without being changed), one row per confirmed trial, smallest first within each
    epoch cap.

    Columns: ``study``, ``storage``, ``trial``, ``epochs`` (the study's epoch cap),
    ``params``, ``macs``, ``test_accuracy`` (final-epoch test % per seed), ``seeds``,
    ``mean``, ``min``; ``on_front``: no row of the same epoch cap has fewer-or-equal
    parameters and a higher-or-equal mean, one of them strictly (the Pareto front, per
    epoch cap: a 20-epoch net is no rival to a 15-epoch one); ``reference``: a row read
    from the ``METRICS`` of a module in ``references`` (a hand-made net exported by
    ``budgetnas train --save``), never on the front; ``smallest``: with ``target``, the
    searched row with the fewest parameters whose mean clears it, per epoch cap.
    ``epochs`` keeps one epoch cap.

    ``frame[frame.smallest]`` answers the question; ``frame[frame.on_front]`` is the front.
    """
    storages = [storage] if isinstance(storage, str) else list(storage)
    found = read_front(storages, references, epochs=epochs)
    answers = set() if target is None else {id(r) for r in found.smallest(target).values() if r}
    rows = sorted((*found.rows, *found.references), key=lambda r: (r.epochs, r.params, r.reference))
    frame = pd.DataFrame([{**asdict(row), "smallest": id(row) in answers} for row in rows])
    frame["trial"] = frame["trial"].astype("Int64")  # references have none
    frame["test_accuracy"] = [list(row.test_accuracy) for row in rows]
    frame["seeds"] = [list(row.seeds) for row in rows]
    return frame


def train(
    target: str | Path | dict | type[nn.Module],
    epochs: int = 15,
    seeds: int = 1,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    train_subset: int | None = None,
    progress: bool = True,
    plain_step: bool = False,
) -> list[float]:
    """Train one network with the default recipe (``budgetnas train``) and return its
    final-epoch test accuracy (%) for each of seeds 0 .. ``seeds`` - 1.

    ``target`` is a reference net's name (``space.ZOO``), a spec dict, an ``nn.Module``
    class whose constructor takes no arguments (N x 1 x 28 x 28 floats in [0, 1] in,
    N x 10 logits out), or what ``budgetnas train`` takes: the path of a spec ``.json``,
    of an exported ``.py`` module, or ``"file.py:ClassName"``. ``train_subset`` trains
    on that many of the training images; the test set is always the full 10k.
    ``plain_step`` trains with the textbook PyTorch step instead of the engine's fast one
    (``--plain-step``): the same maths, slower.
    """
    make = _network(target)
    torch_device = check_device(device)
    try:
        fit, test = confirm_data(data_dir, torch_device, train_subset=train_subset)
    except ValueError as error:  # train_subset larger than the training set
        raise UsageError(f"train_subset: {error}") from None
    accuracies = []
    for seed in range(seeds):
        torch.manual_seed(seed)  # the init, as the search and the confirmation seed it
        result = train_model(
            make(),
            fit,
            test,
            Recipe(epochs=epochs),
            seed=seed,
            device=torch_device,
            on_epoch=None if progress else _epoch_line(seed, epochs),
            progress=progress,
            plain=plain_step,
        )
        print(f"seed {seed}: final-epoch test {result.accuracy:.2f}% ({result.seconds:.0f} s)")
        accuracies.append(result.accuracy)
    return accuracies


def _network(target: str | Path | dict | type[nn.Module]) -> Callable[[], nn.Module]:
    """What builds a fresh ``target``, checked before any data is loaded."""
    if isinstance(target, dict):
        spec = normalise(target)  # SpecError for an invalid spec
        return lambda: build(spec)
    if isinstance(target, type) and issubclass(target, nn.Module):
        return target
    return load_target(str(target)).build


def _epoch_line(seed: int, epochs: int) -> Callable[[EpochStats], None]:
    def on_epoch(stats: EpochStats) -> None:
        print(
            f"  seed {seed} epoch {stats.epoch}/{epochs}: loss {stats.train_loss:.4f}, "
            f"test {stats.accuracy:.2f}% ({stats.seconds:.0f} s)",
            flush=True,
        )

    return on_epoch


def mnist_test(
    count: int | None = None, data_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` MNIST test images (all 10,000 by default) as an exported
    network takes them, ``count x 1 x 28 x 28`` floats in [0, 1], and their labels."""
    _, test = confirm_data(data_dir, "cpu", train_subset=1)
    images, labels = test.images[:count], test.labels[:count]
    return images.unsqueeze(1).float().div(255), labels.long()


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """budgetnas prints its own line per trial: silence Optuna's INFO log (which would
    repeat it) and its experimental-feature warnings for the call, then restore both."""
    verbosity = optuna.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)
