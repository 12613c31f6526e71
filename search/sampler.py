"""Map an Optuna trial to a candidate: an architecture spec and a training recipe.

The space is fixed-size (every trial suggests the same parameters) so that Optuna's
multivariate TPE can model how they interact. A candidate is three stages of 3x3
blocks joined by downsampling, then an optional 1x1 squeeze and a GAP head:

    stage 1 (28x28) -> down -> stage 2 (~13x13) -> down -> stage 3 (~6x6) -> [1x1] -> head

The trial picks each stage's width only relative to the others, and how much of the
budget to use (`fill`); the widths are then scaled together to the widest net with at
most fill x budget parameters. Widths drawn on an absolute scale left candidates either
over the budget (pruned untrained, a wasted proposal) or a fraction of it (too small to
compete): in a 40-trial search at 8k (results/search_8000_absolute_widths.log) 9 were
over and the median trained one had 3,687 parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from search.train import Recipe
from space import Spec, analyse, normalise

# Peak learning rates that the search scales up and down, per optimizer.
BASE_LR = {"sgd": 0.1, "adamw": 0.004}
# Augmentation at strength 1.0: the recipe that took ref7676 past 99.4%.
BASE_AUGMENT = {"rotate": 8.0, "translate": 0.1, "scale": 0.08}
MIN_WIDTH = 4  # channels: the narrowest stage a scaled-down candidate keeps
MIN_FILL = 0.5  # the smallest share of the budget a candidate is scaled to


def sample_architecture(trial: optuna.Trial, budget: int) -> Spec:
    """The spec for this trial, scaled to use `fill` of the budget. It exceeds the budget
    only when even its narrowest version does (too deep for a tiny budget); the caller
    prunes it then."""
    block_type = trial.suggest_categorical("block_type", ["conv", "separable", "mixed"])
    downsample = trial.suggest_categorical("downsample", ["transition", "maxpool"])
    dropout = trial.suggest_float("dropout", 0.0, 0.15)
    stages = []
    for stage in (1, 2, 3):
        relative_width = trial.suggest_float(f"relative_width{stage}", 1.0, 4.0, log=True)
        depth = trial.suggest_int(f"depth{stage}", 1, 3)
        # Unpadded convs shrink the map and save compute; the last stage stays padded
        # so that the head always sees a map of a few pixels.
        padding = trial.suggest_int(f"padding{stage}", 0, 1) if stage < 3 else 1
        stages.append((relative_width, depth, padding))
    squeeze = trial.suggest_categorical("squeeze", [0, 8, 12, 16])
    head = trial.suggest_categorical("head", ["conv_gap", "gap_conv", "gap_linear"])
    fill = trial.suggest_float("fill", MIN_FILL, 1.0)

    def spec_at(scale: float) -> Spec:
        blocks: list[dict] = []
        for stage, (relative_width, depth, padding) in enumerate(stages, start=1):
            width = max(MIN_WIDTH, round(scale * relative_width))
            if stage > 1:
                if downsample == "transition":
                    blocks.append({"type": "transition", "out": width})
                else:
                    blocks.append({"type": "maxpool"})
            for index in range(depth):
                # Depthwise convs need channels to work on: the very first block is a full conv.
                separable = block_type == "separable" or (block_type == "mixed" and index > 0)
                kind = "separable" if separable and blocks else "conv"
                blocks.append({"type": kind, "out": width, "padding": padding, "dropout": dropout})
        if squeeze:
            blocks.append({"type": "pointwise", "out": squeeze})
        return {"blocks": blocks, "head": {"type": head}}

    return widest_within(spec_at, fill * budget)


def widest_within(spec_at: Callable[[float], Spec], max_params: float) -> Spec:
    """``spec_at(scale)`` for the largest scale that keeps it within ``max_params``.

    The count only grows with the scale, so a bisection finds it; the exact count comes
    from ``space.analyse``, no module is built. ``spec_at(0)`` (every stage at its
    narrowest) comes back when nothing fits.
    """

    def params(scale: float) -> int:
        return analyse(normalise(spec_at(scale))).params

    low, high = 0.0, 1.0
    while params(high) <= max_params:  # widths grow without bound, so this ends
        low, high = high, 2 * high
    for _ in range(20):  # well below one channel's difference in width
        middle = (low + high) / 2
        low, high = (middle, high) if params(middle) <= max_params else (low, middle)
    return spec_at(low)


def sample_recipe(trial: optuna.Trial, epochs: int) -> Recipe:
    """Training hyperparameters for this trial, under the epoch cap."""
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
    lr_scale = trial.suggest_float("lr_scale", 0.25, 4.0, log=True)
    batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
    augment = trial.suggest_float("augment", 0.0, 1.5)
    label_smoothing = trial.suggest_float("label_smoothing", 0.0, 0.1)
    return Recipe(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=BASE_LR[optimizer] * lr_scale,
        label_smoothing=label_smoothing,
        **{key: value * augment for key, value in BASE_AUGMENT.items()},
    )
