"""Map an Optuna trial to a candidate: an architecture spec and a training recipe.

The space is fixed-size (every trial suggests the same parameters) so that Optuna's
multivariate TPE can model how they interact. A candidate is three stages of 3x3
blocks joined by downsampling, then an optional 1x1 squeeze and a GAP head:

    stage 1 (28x28) -> down -> stage 2 (~13x13) -> down -> stage 3 (~6x6) -> [1x1] -> head

Widths are drawn from a range that grows with the square root of the budget, so most
candidates land near the budget whatever it is; the exact count still decides.
"""

from __future__ import annotations

import math

import optuna

from search.train import Recipe
from space import Spec

# Peak learning rates that the search scales up and down, per optimizer.
BASE_LR = {"sgd": 0.1, "adamw": 0.004}
# Augmentation at strength 1.0: the recipe that took ref7676 past 99.4%.
BASE_AUGMENT = {"rotate": 8.0, "translate": 0.1, "scale": 0.08}


def max_width(budget: int) -> int:
    """Widest stage the sampler offers: a net of ~6 such 3x3 convs would be near budget."""
    return max(8, int(math.sqrt(budget / 12)))


def sample_architecture(trial: optuna.Trial, budget: int) -> Spec:
    """The spec for this trial; it may exceed the budget (the caller prunes it)."""
    widest = max_width(budget)
    block_type = trial.suggest_categorical("block_type", ["conv", "separable", "mixed"])
    downsample = trial.suggest_categorical("downsample", ["transition", "maxpool"])
    dropout = trial.suggest_float("dropout", 0.0, 0.15)
    blocks: list[dict] = []
    for stage in (1, 2, 3):
        width = trial.suggest_int(f"width{stage}", 4, widest)
        depth = trial.suggest_int(f"depth{stage}", 1, 3)
        # Unpadded convs shrink the map and save compute; the last stage stays padded
        # so that the head always sees a map of a few pixels.
        padding = trial.suggest_int(f"padding{stage}", 0, 1) if stage < 3 else 1
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
    squeeze = trial.suggest_categorical("squeeze", [0, 8, 12, 16])
    if squeeze:
        blocks.append({"type": "pointwise", "out": squeeze})
    head = trial.suggest_categorical("head", ["conv_gap", "gap_conv", "gap_linear"])
    return {"blocks": blocks, "head": {"type": head}}


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
