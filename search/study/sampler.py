"""Map an Optuna trial to a candidate: an architecture spec, trained with one fixed recipe.

The space is fixed-size (every trial suggests the same parameters) so that Optuna's
multivariate TPE can model how they interact. A candidate is two or three stages of
3x3 blocks joined by downsampling, then an optional 1x1 squeeze and a GAP head:

    stage 1 (28x28) -> down -> stage 2 (~13x13) [-> down -> stage 3 (~6x6)] -> [1x1] -> head

It holds the plain conv stacks that do well at these budgets (narrow early stages,
max-pools, bias on or off, GAP + 1x1 head) and a separable family whose depthwise
blocks are kept out of the 28x28 stage, where they are slow per epoch for what they
learn.

Three choices come from measurements. The fidelity study (results/fidelity.jsonl,
README) found that at the default compute cap the 28x28 stage spent most of a
candidate's MACs, so sampled 8k candidates ended at 3-5.5k parameters and none reached
ref7676 (99.34% validation against the sample's best 99.23%). ref7676 spends them
differently: its first stage ramps 4 -> 8 -> 16 channels and it has only two stages.
So a candidate has two or three stages, and its first stage ramps (each block half the
width of the next). The ramp was first a choice, as was ref7676's 1x1 + max-pool
transition beside a plain max-pool; over the 117 distinct candidates that the 8k
searches trained (``budgetnas choices``, README), none without the ramp (6 trained to
the cap, best 99.29%) and none with transitions (12, best 99.33%) reached 99.4%, against
8 of 27 with the ramp and 8 of 21 with max-pools, and the 4k search had all but settled
on both by itself. So both are fixed, and TPE spends its trials on the other choices. By
the same rule the middle stage has two or three blocks, not one: over the 519 distinct
candidates of all the committed searches (results/choices_all.txt), the 76 with one block
screened 1.5 points lower at the 1-epoch rung and none of their 9 trained to the cap
reached 99.4% (best 99.24%), against 3 of 68 with two blocks and 13 of 53 with three;
every shipped model has three.

The trial picks each stage's width only relative to the first, and how much of the
budget to use (`fill`); the widths are then scaled together to the widest net within
fill x budget parameters and both compute caps (``max_macs``, ``max_activations``).
Widths drawn on an absolute scale left candidates either over the budget (pruned
untrained, a wasted proposal) or a fraction of it (too small to compete): in a 40-trial
search at 8k (results/search_8000_absolute_widths.log) 9 were over and the median
trained one had 3,687 parameters.

Every candidate trains with the engine's default recipe (``Recipe()``), the one that
takes ref7676 past 99.4%: searching recipes too multiplied the space for TPE and gave
candidates that could not train in the epoch cap (AdamW at batch 256 reaching 20.8%
in two epochs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from search.engine.train import Recipe
from space import Spec, analyse, normalise

MIN_WIDTH = 4  # channels: the narrowest stage a scaled-down candidate keeps
MIN_FILL = 0.5  # the smallest share of the budget a candidate is scaled to
MIN_MIDDLE_DEPTH = 2  # blocks in stage 2: with one, no candidate reached 99.4% (above)
# Default compute cap per parameter of budget: 160 MACs/param is 1.28 M MACs per image
# at 8k (ref7676: 1.14 M), 0.64 M at 4k (the 3,762-param plain net: 0.62 M) and 3.2 M
# at 20k (ref13010: 2.36 M). Above it, candidates train slowly on a CPU for no gain.
MACS_PER_PARAM = 160
# ... but never below the 8k cap: the best 8k nets (results/search_8000_60min.db) use
# 1.04-1.19 M MACs, at 0.8-0.93 of it, and that compute trains 15 epochs in minutes at
# any budget. Per parameter alone, the cap shrank them below 7.4k parameters of budget,
# and at a budget between 4k and 8k every trained candidate sat at the cap.
MIN_MAX_MACS = MACS_PER_PARAM * 8000
# Default cap on activations per image (``space.Analysis.activations``), which set a
# small net's time per epoch on a CPU more than its MACs did under the plain training
# step (docs/evidence.md, "What an epoch costs"; under the fast step the MACs rank it
# better). Most of them are written by the full-resolution first stage, which the good
# nets keep narrow at every budget: ref7676 has 22k, ref13010 29k, ref19354 40k, the
# shipped 8k net 36k and the 4k one 26k. 45k keeps all of them; above it, sampled 8k
# candidates took up to 54 s per epoch on one core with the plain step, twice the shipped
# net's time. It grows with budgets over 15k so that wider nets stay in reach.
MIN_MAX_ACTIVATIONS = 45_000
ACTIVATIONS_PER_PARAM = 3


def default_max_macs(budget: int) -> int:
    """The compute cap a search uses unless told otherwise: MACS_PER_PARAM x budget, at
    least MIN_MAX_MACS."""
    return max(MIN_MAX_MACS, MACS_PER_PARAM * budget)


def default_max_activations(budget: int) -> int:
    """The activation cap a search uses unless told otherwise (see MIN_MAX_ACTIVATIONS)."""
    return max(MIN_MAX_ACTIVATIONS, ACTIVATIONS_PER_PARAM * budget)


def sample_architecture(
    trial: optuna.Trial,
    budget: int,
    max_macs: int | None = None,
    max_activations: int | None = None,
) -> Spec:
    """The spec for this trial, scaled to use `fill` of the budget within ``max_macs``
    and ``max_activations`` (defaults: ``default_max_macs(budget)``,
    ``default_max_activations(budget)``). It exceeds a limit only when even its narrowest
    version does (too deep for a tiny budget); the caller prunes it then."""
    max_macs = default_max_macs(budget) if max_macs is None else max_macs
    if max_activations is None:
        max_activations = default_max_activations(budget)
    with warnings.catch_warnings():
        # A retried trial (a candidate stopped by --timeout or a dead worker) replays its
        # values with the ranges they were first drawn from. Optuna keeps those values, as
        # a retry must, but warns for each range the space has changed since.
        warnings.filterwarnings("ignore", "Inconsistent parameter values", RuntimeWarning)
        family = trial.suggest_categorical("family", ["plain", "separable"])
        stage_count = trial.suggest_int("stages", 2, 3)
        bias = trial.suggest_categorical("bias", [False, True])
        dropout = trial.suggest_float("dropout", 0.0, 0.1)
        growth = {
            2: trial.suggest_float("growth2", 1.0, 3.0, log=True),  # stage 2 width / stage 1's
            3: trial.suggest_float("growth3", 0.75, 2.0, log=True),  # stage 3 width / stage 2's
        }
        stages = []
        relative_width = 1.0
        for stage in (1, 2, 3):
            relative_width *= growth.get(stage, 1.0)
            depth = trial.suggest_int(f"depth{stage}", MIN_MIDDLE_DEPTH if stage == 2 else 1, 3)
            # Unpadded convs shrink the map and save compute; a third stage stays padded
            # so that the head always sees a map of a few pixels.
            padding = trial.suggest_int(f"padding{stage}", 0, 1) if stage < 3 else 1
            stages.append((relative_width, depth, padding))
        del stages[stage_count:]  # a two-stage trial still suggests stage 3, unused
        squeeze = trial.suggest_categorical("squeeze", [0, 8, 12, 16])
        head = trial.suggest_categorical("head", ["conv_gap", "gap_conv", "gap_linear"])
        fill = trial.suggest_float("fill", MIN_FILL, 1.0)

    def spec_at(scale: float) -> Spec:
        blocks: list[dict] = []
        for stage, (relative_width, depth, padding) in enumerate(stages, start=1):
            width = max(MIN_WIDTH, round(scale * relative_width))
            if stage > 1:
                blocks.append({"type": "maxpool"})
            kind = "separable" if family == "separable" and stage > 1 else "conv"
            for block in range(depth):
                halvings = depth - 1 - block if stage == 1 else 0  # ramp: 4 -> 8 -> 16
                blocks.append(
                    {
                        "type": kind,
                        "out": max(MIN_WIDTH, round(width / 2**halvings)),
                        "padding": padding,
                        "bias": bias,
                        "dropout": dropout,
                    }
                )
        if squeeze:
            blocks.append({"type": "pointwise", "out": squeeze, "bias": bias})
        return {"blocks": blocks, "head": {"type": head, "bias": bias}}

    return widest_within(spec_at, fill * budget, max_macs, max_activations)


def widest_within(
    spec_at: Callable[[float], Spec],
    max_params: float,
    max_macs: float = float("inf"),
    max_activations: float = float("inf"),
) -> Spec:
    """``spec_at(scale)`` for the largest scale that keeps it within ``max_params``,
    ``max_macs`` and ``max_activations``.

    The counts only grow with the scale, so a bisection finds it; the exact counts come
    from ``space.analyse``, no module is built. ``spec_at(0)`` (every stage at its
    narrowest) comes back when nothing fits.
    """

    def fits(scale: float) -> bool:
        analysis = analyse(normalise(spec_at(scale)))
        return (
            analysis.params <= max_params
            and analysis.macs <= max_macs
            and analysis.activations <= max_activations
        )

    low, high = 0.0, 1.0
    while fits(high):  # widths grow without bound, so this ends
        low, high = high, 2 * high
    for _ in range(20):  # well below one channel's difference in width
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return spec_at(low)


def search_recipe(epochs: int) -> Recipe:
    """The recipe every searched candidate trains with, under the epoch cap."""
    return Recipe(epochs=epochs)
