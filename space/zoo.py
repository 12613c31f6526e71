"""Reference architectures from the MNIST literature: the hand-made baselines to beat.

Each is a spec whose exact parameter count matches the published figure (the tests
check it), so the search can be warm-started with them and compared against them.
"""

from __future__ import annotations

from space.spec import Spec


def _conv(out: int, padding: int, bias: bool, dropout: float = 0.0) -> dict:
    return {"type": "conv", "out": out, "padding": padding, "bias": bias, "dropout": dropout}


# 7,676 parameters: three unpadded convs, a 1x1 + max-pool transition, three more convs,
# then a 1x1 conv to 10 classes averaged over the 7x7 map. No bias anywhere.
REF7676: Spec = {
    "blocks": [
        _conv(4, 0, False),
        _conv(8, 0, False),
        _conv(16, 0, False),
        {"type": "transition", "out": 8, "bias": False},
        _conv(16, 0, False),
        _conv(16, 0, False),
        _conv(16, 1, False),
    ],
    "head": {"type": "conv_gap", "bias": False, "dropout": 0.0},
}

# 13,010 parameters: padded conv pairs between max-pools, a 1x1 conv with BatchNorm,
# GAP and a 1x1 conv to 10 classes. Bias on every conv except the 24->24 one, as in
# the published layer-by-layer breakdown.
REF13010: Spec = {
    "blocks": [
        _conv(8, 1, True),
        _conv(16, 1, True),
        {"type": "maxpool"},
        _conv(16, 1, True),
        _conv(24, 1, True),
        {"type": "maxpool"},
        _conv(24, 1, False),
        {"type": "pointwise", "out": 16, "bias": True},
    ],
    "head": {"type": "gap_conv", "bias": True, "dropout": 0.0},
}

# 18,594 parameters: three VGG-style stages of padded 3x3 convs with bias, GAP, dropout
# and a linear layer to 10 classes.
REF18594: Spec = {
    "blocks": [
        _conv(8, 1, True),
        _conv(8, 1, True),
        {"type": "maxpool"},
        _conv(16, 1, True),
        _conv(16, 1, True),
        {"type": "maxpool"},
        _conv(32, 1, True),
        _conv(32, 1, True),
        {"type": "maxpool"},
    ],
    "head": {"type": "gap_linear", "bias": True, "dropout": 0.1},
}

# 14,874 parameters: a padded 3x3 conv and a 1x1 conv at 28x28, max-pool and channel
# dropout, a depthwise-separable block, a 1x1 conv whose padding grows the map 14x14 ->
# 16x16, max-pool and channel dropout again, a second separable block, then a padded 3x3
# conv to 10 classes averaged over the 8x8 map. Bias only in that last conv.
REF14874: Spec = {
    "blocks": [
        _conv(16, 1, False),
        {"type": "pointwise", "out": 32, "bias": False},
        {"type": "maxpool", "dropout": 0.1, "dropout_kind": "dropout2d"},
        {"type": "separable", "out": 32, "padding": 1, "bias": False},
        {"type": "pointwise", "out": 64, "padding": 1, "bias": False},
        {"type": "maxpool", "dropout": 0.15, "dropout_kind": "dropout2d"},
        {"type": "separable", "out": 64, "padding": 1, "bias": False},
    ],
    "head": {"type": "conv3_gap", "bias": True, "dropout": 0.0},
}

# 19,354 parameters: bias on every conv; two plain conv + ReLU layers (no BatchNorm), then
# BatchNorm from 8 channels on, channel dropout in two blocks, a 1x1 conv without
# BatchNorm, and no pooling head: the 16x7x7 map flattened (784) into a linear layer.
REF19354: Spec = {
    "blocks": [
        {**_conv(4, 1, True), "bn": False},
        {**_conv(8, 1, True), "bn": False},
        _conv(12, 1, True),
        _conv(16, 1, True),
        {"type": "maxpool"},
        {**_conv(20, 1, True, 0.25), "dropout_kind": "dropout2d"},
        _conv(16, 1, True),
        {"type": "maxpool"},
        {**_conv(16, 1, True, 0.25), "dropout_kind": "dropout2d"},
        {"type": "pointwise", "out": 16, "bias": True, "bn": False},
    ],
    "head": {"type": "flatten_linear", "bias": True, "dropout": 0.25},
}

ZOO: dict[str, Spec] = {
    "ref7676": REF7676,
    "ref13010": REF13010,
    "ref14874": REF14874,
    "ref18594": REF18594,
    "ref19354": REF19354,
}
