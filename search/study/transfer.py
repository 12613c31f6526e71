"""Transfer: a new search first tries what earlier searches found.

A question put to budgetnas is rarely its first: the shipped models (``models/``) and
the studies in the search's storage already hold nets that cleared nearby targets. At
a budget between 4k and 8k and an epoch cap below 15, the shipped 8k net trained as it
is matched an hour-long search in a third of the time (docs/search.md). So a new
study queues those nets first, each rescaled to the new budget and caps with the
space's own width scaling (``sampler.widest_within``), and trained straight at the
full epoch cap: they earned their place at full length where they came from.

Each queued trial records where it came from (user attribute ``origin``), which
``show``, the dashboard's note and an export's ``METRICS`` repeat.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.study.confirm import selected, top_trials
from search.study.sampler import MIN_WIDTH, widest_within
from space import Spec, SpecError, analyse, normalise

# The shipped models of a source checkout (``pip install -e .``); absent from a wheel.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"
TRANSFERRED = 3  # known nets a new study queues at most: each costs a full training


@dataclass(frozen=True)
class KnownNet:
    """A net an earlier search found: its spec, the budget it was found under, its size
    and confirmed mean test accuracy (None: the study's best trial, never confirmed)."""

    spec: Spec
    budget: int
    params: int
    test_mean: float | None
    origin: str  # where it came from, in words


def shipped_models(folder: Path = SHIPPED_MODELS) -> list[KnownNet]:
    """The nets of the export modules in ``folder`` (``budgetnas export`` writes them).

    The modules are read, not imported: their ``SPEC`` and ``METRICS`` are literals.
    """
    known = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        values = _literals(path, ("SPEC", "METRICS"))
        if "SPEC" not in values or "budget" not in values.get("METRICS", {}):
            continue
        metrics = values["METRICS"]
        known.append(
            KnownNet(
                spec=values["SPEC"],
                budget=metrics["budget"],
                params=analyse(normalise(values["SPEC"])).params,
                test_mean=metrics.get("test_accuracy_mean"),
                origin=f"shipped model {path.stem}",
            )
        )
    return known


def earlier_studies(storage: optuna.storages.BaseStorage, exclude: str) -> Iterator[optuna.Study]:
    """The searches in ``storage`` (single-objective studies with settings), except the one
    named ``exclude``: a search does not learn from itself."""
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == exclude or len(summary.directions) != 1:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if study.user_attrs.get("settings", {}).get("budget") is not None:
            yield study


def study_nets(storage: optuna.storages.BaseStorage, exclude: str) -> list[KnownNet]:
    """Each earlier study's winner in ``storage`` (its selected net, else its best trial)."""
    known = []
    for study in earlier_studies(storage, exclude):
        budget = study.user_attrs["settings"]["budget"]
        winners = selected(study)
        trial = None
        if winners:
            number, test_mean = winners[0].trial, winners[0].mean
            trial = study.get_trials(deepcopy=False)[number]
        elif best := top_trials(study, 1):
            trial, test_mean = best[0], None
        if trial is None or trial.state != TrialState.COMPLETE or "spec" not in trial.user_attrs:
            continue
        known.append(
            KnownNet(
                spec=trial.user_attrs["spec"],
                budget=budget,
                params=trial.user_attrs["params"],
                test_mean=test_mean,
                origin=f"study {study.study_name!r} trial {trial.number}",
            )
        )
    return known


def rescaled(net: KnownNet, budget: int, max_macs: int, max_activations: int) -> Spec | None:
    """``net`` at a new budget: every width scaled together so that it uses the share of
    the budget it used under its own, and never less than its own size when that fits,
    within both compute caps. None when even its narrowest version does not fit."""
    max_params = min(budget, max(net.params, net.params / net.budget * budget))
    source = normalise(net.spec)

    def spec_at(scale: float) -> Spec:
        last = len(source["blocks"]) - 1
        blocks = []
        for index, block in enumerate(source["blocks"]):
            block = {key: value for key, value in block.items() if key != "in"}
            squeeze = block["type"] == "pointwise" and index == last  # the space keeps it
            if "out" in block and not squeeze:
                block["out"] = max(MIN_WIDTH, round(block["out"] * scale))
            blocks.append(block)
        head = {key: value for key, value in source["head"].items() if key != "in"}
        return {"blocks": blocks, "head": head}

    try:
        spec = normalise(widest_within(spec_at, max_params, max_macs, max_activations))
    except SpecError:
        return None
    analysis = analyse(spec)
    if (
        analysis.params > budget
        or analysis.macs > max_macs
        or analysis.activations > max_activations
    ):
        return None
    return spec


def queue_known_nets(
    study: optuna.Study,
    known: list[KnownNet],
    budget: int,
    max_macs: int,
    max_activations: int,
    count: int = TRANSFERRED,
) -> list[str]:
    """Queue up to ``count`` rescaled nets of ``known``, each of its own shape, as the
    study's first trials, those found at the nearest budget first (then the best
    confirmed); returns their origins. Nets found at a budget close to this one need the
    least rescaling, and rescaling is what they were not tested under. A net that is
    another one rescaled (a search's transfer winner, say) would be rescaled to nearly the
    same net again: only the first of a shape is queued."""
    ranked = sorted(
        known,
        key=lambda net: (abs(math.log(net.budget / budget)), -(net.test_mean or 0.0)),
    )
    queued: list[str] = []
    shapes: list[Spec] = []
    for net in ranked:
        spec = rescaled(net, budget, max_macs, max_activations)
        if spec is None or shape(spec) in shapes:
            continue
        params = analyse(spec).params
        origin = f"rescaled from {net.origin} ({net.params:,} -> {params:,} params)"
        if params == net.params and spec == normalise(net.spec):
            origin = f"{net.origin}, as it is ({params:,} params)"
        study.enqueue_trial({}, user_attrs={"given_spec": spec, "origin": origin})
        queued.append(origin)
        shapes.append(shape(spec))
        if len(queued) == count:
            break
    return queued


def shape(spec: Spec) -> Spec:
    """``spec`` without its widths: what rescaling keeps."""
    blocks = [
        {k: v for k, v in block.items() if k not in ("in", "out")} for block in spec["blocks"]
    ]
    return {"blocks": blocks, "head": {k: v for k, v in spec["head"].items() if k != "in"}}


def _literals(path: Path, names: tuple[str, ...]) -> dict:
    """The module-level assignments to ``names`` in ``path`` that are Python literals."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return values
