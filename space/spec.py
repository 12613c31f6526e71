"""The architecture spec: one plain, JSON-serialisable dict that describes a network.

Everything else (parameter count, shapes, receptive field, the nn.Module, the exported
source) is derived from it, so a spec stored in an Optuna trial is all it takes to
rebuild, count or export that trial's network.

A spec for 1x28x28 inputs and 10 classes::

    {
        "blocks": [
            {"type": "conv", "out": 8, "padding": 1, "bias": False, "dropout": 0.05},
            {"type": "separable", "out": 16, "padding": 0, "bias": False, "dropout": 0.0},
            {"type": "pointwise", "out": 12, "bias": False, "dropout": 0.0},
            {"type": "transition", "out": 8, "bias": False},
            {"type": "maxpool"},
        ],
        "head": {"type": "gap_conv", "bias": False, "dropout": 0.0},
    }

Block types:

- ``conv``: 3x3 conv, BatchNorm, ReLU, optional dropout.
- ``pointwise``: 1x1 conv, BatchNorm, ReLU, optional dropout.
- ``separable``: depthwise 3x3 conv + pointwise 1x1 conv, BatchNorm, ReLU, optional dropout.
- ``transition``: 1x1 conv that changes the channel count (no BN, no ReLU), then 2x2 max-pool.
- ``maxpool``: 2x2 max-pool, optional dropout after it.

Block options (defaults in brackets; a key a block type does not take is an error):

- ``out``: output channels (required, except for ``maxpool``); ``in`` is inferred.
- ``padding`` [1; 0 for ``pointwise``]: 0 or 1, of the 3x3 conv (``conv``), the depthwise
  conv (``separable``) or the 1x1 conv (``pointwise``: padding 1 grows the map by 2,
  14x14 -> 16x16).
- ``bias`` [false]: the convs' bias.
- ``bn`` [true]: BatchNorm between the conv and the ReLU (``conv``, ``pointwise``,
  ``separable``); false gives conv -> ReLU.
- ``dropout`` [0.0]: dropout probability after the ReLU (``conv``, ``pointwise``,
  ``separable``) or after the pool (``maxpool``); 0 means no dropout layer.
- ``dropout_kind`` ["dropout"]: ``"dropout"`` (``nn.Dropout``, single activations) or
  ``"dropout2d"`` (``nn.Dropout2d``, whole channels).

Head types (always to 10 classes): ``conv_gap`` (1x1 conv, then global average pooling),
``conv3_gap`` (3x3 conv with padding 1, then GAP), ``gap_conv`` (GAP, then 1x1 conv),
``gap_linear`` (GAP, then a linear layer) and ``flatten_linear`` (no pooling: the last
C x H x W map flattened into a linear layer). Head options: ``bias`` [false] and
``dropout`` [0.0], an ``nn.Dropout`` applied just before the head's conv or linear layer.

Every block may give ``in``; it is filled in from the previous block when absent and
must match it when present, so a hand-written spec whose channels don't chain fails.
``normalise`` fills in every default, so a spec written before an option existed keeps
its meaning; ``compact`` leaves the later options out again where they hold their
default, which is how exported modules write their ``SPEC``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10

BLOCK_TYPES = ("conv", "pointwise", "separable", "transition", "maxpool")
HEAD_TYPES = ("conv_gap", "conv3_gap", "gap_conv", "gap_linear", "flatten_linear")
DROPOUT_KINDS = ("dropout", "dropout2d")

_DROPOUT = {"dropout": 0.0, "dropout_kind": "dropout"}
# The keys each block type takes, with defaults for the optional ones ("in" is inferred).
# Their order is the order of a normalised block's keys.
_BLOCK_FIELDS: dict[str, dict[str, Any]] = {
    "conv": {"padding": 1, "bias": False, "bn": True, **_DROPOUT},
    "pointwise": {"padding": 0, "bias": False, "bn": True, **_DROPOUT},
    "separable": {"padding": 1, "bias": False, "bn": True, **_DROPOUT},
    "transition": {"bias": False},
    "maxpool": {**_DROPOUT},
}
# Options added after the first specs were stored and exported: ``compact`` leaves them
# out where they hold their default, so those specs still read as they were written.
_LATER_OPTIONS: dict[str, tuple[str, ...]] = {
    "conv": ("bn", "dropout_kind"),
    "pointwise": ("padding", "bn", "dropout_kind"),
    "separable": ("bn", "dropout_kind"),
    "transition": (),
    "maxpool": ("dropout", "dropout_kind"),
}
_HEAD_FIELDS: dict[str, Any] = {"bias": False, "dropout": 0.0}

Spec = dict[str, Any]


class SpecError(ValueError):
    """A spec that cannot describe a network; the message names the offending block."""


@dataclass(frozen=True)
class Analysis:
    """What a spec implies, computed without building a module.

    ``shapes[i]`` and ``receptive_fields[i]`` describe the feature map after block ``i``;
    ``receptive_field`` is that of the map the head pools or flattens: the last block's,
    grown by the head's own 3x3 conv for ``conv3_gap``.
    ``macs`` counts the multiply-accumulates of one image's forward pass through the conv
    and linear layers (the usual convention: BatchNorm, ReLU, pooling and biases are left
    out). It is the compute a candidate costs, which its parameter count does not say: a
    narrow layer at 28x28 costs more than a wide one at 7x7.
    ``activations`` counts the values the conv and linear layers write for one image
    (their outputs, a separable block's depthwise output included). On a CPU it predicts
    a small net's time per epoch better than MACs do: BatchNorm, ReLU, dropout and the
    backward pass each stream through every activation, and a tiny net's convs are too
    small to keep the cores busy, so memory traffic sets the pace.
    """

    params: int
    block_params: list[int]
    head_params: int
    shapes: list[tuple[int, int, int]]
    receptive_fields: list[int]
    macs: int
    block_macs: list[int]
    head_macs: int
    activations: int
    head_receptive_field: int

    @property
    def receptive_field(self) -> int:
        return self.head_receptive_field


def _where(index: int | None, kind: str) -> str:
    return "head" if index is None else f"block {index + 1} ({kind})"


def _check_fields(
    given: dict[str, Any], defaults: dict[str, Any], required: set[str], where: str
) -> dict[str, Any]:
    allowed = {"type", "in", *required, *defaults}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(given))
    if missing:
        raise SpecError(f"{where}: missing key(s) {missing}")
    # Canonical key order (type, in, out, then the rest) keeps exported specs readable.
    full = {"type": given["type"]}
    full.update((key, given[key]) for key in ("in", "out") if key in given)
    full.update((key, given.get(key, default)) for key, default in defaults.items())
    for key in ("in", "out"):
        if key in full and (not _is_int(full[key]) or full[key] < 1):
            raise SpecError(f"{where}: '{key}' must be a positive integer, got {full[key]!r}")
    if "padding" in full and (not _is_int(full["padding"]) or full["padding"] not in (0, 1)):
        raise SpecError(f"{where}: 'padding' must be 0 or 1, got {full['padding']!r}")
    for key in ("bias", "bn"):
        if key in full and not isinstance(full[key], bool):
            raise SpecError(f"{where}: '{key}' must be true or false, got {full[key]!r}")
    if "dropout_kind" in full and full["dropout_kind"] not in DROPOUT_KINDS:
        raise SpecError(
            f"{where}: 'dropout_kind' must be one of {DROPOUT_KINDS}, got {full['dropout_kind']!r}"
        )
    if "dropout" in full:
        p = full["dropout"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise SpecError(f"{where}: 'dropout' must be a number in [0, 1), got {p!r}")
        full["dropout"] = float(p)
    return full


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise(spec: Spec) -> Spec:
    """Return a copy of ``spec`` with every field explicit, or raise SpecError.

    Checks keys and value ranges, fills defaults and each block's ``in``, and walks the
    shapes so that a feature map that collapses is reported at the block that does it.
    """
    if not isinstance(spec, dict):
        raise SpecError(f"a spec is a dict with 'blocks' and 'head', got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"blocks", "head"})
    if unknown:
        raise SpecError(f"spec: unknown key(s) {unknown}; a spec has 'blocks' and 'head'")
    blocks = spec.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise SpecError("spec: 'blocks' must be a non-empty list")
    head = spec.get("head")
    if not isinstance(head, dict):
        raise SpecError("spec: 'head' must be a dict with a 'type'")

    channels, height, width = INPUT_SHAPE
    normal_blocks = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            kind = block.get("type") if isinstance(block, dict) else block
            raise SpecError(f"block {index + 1}: unknown type {kind!r}; one of {BLOCK_TYPES}")
        kind = block["type"]
        where = _where(index, kind)
        required = set() if kind == "maxpool" else {"out"}
        full = _check_fields(block, _BLOCK_FIELDS[kind], required, where)
        if "in" in full and full["in"] != channels:
            raise SpecError(
                f"{where}: 'in' is {full['in']} but the previous block gives {channels} channels"
            )
        if kind == "maxpool":
            full.pop("in", None)
        else:
            full = {"type": kind, "in": channels, **full}
        channels, height, width = _block_output(full, (channels, height, width), where)
        normal_blocks.append(full)

    if head.get("type") not in HEAD_TYPES:
        raise SpecError(f"head: unknown type {head.get('type')!r}; one of {HEAD_TYPES}")
    normal_head = _check_fields(head, _HEAD_FIELDS, set(), "head")
    if "in" in normal_head and normal_head["in"] != channels:
        raise SpecError(
            f"head: 'in' is {normal_head['in']} but the last block gives {channels} channels"
        )
    normal_head = {"type": normal_head["type"], "in": channels, **normal_head}
    return {"blocks": normal_blocks, "head": normal_head}


def _block_output(
    block: dict[str, Any], shape: tuple[int, int, int], where: str
) -> tuple[int, int, int]:
    channels, height, width = shape
    kind = block["type"]
    if kind in ("conv", "separable"):
        shrink = 2 - 2 * block["padding"]
        if height - shrink < 1:
            raise SpecError(
                f"{where}: the {height}x{width} feature map collapses under a 3x3 conv "
                "without padding; use padding 1 or fewer downsampling blocks"
            )
        return block["out"], height - shrink, width - shrink
    if kind == "pointwise":  # padding 1 around a 1x1 conv grows the map by 2
        grow = 2 * block["padding"]
        return block["out"], height + grow, width + grow
    if height < 2:
        raise SpecError(
            f"{where}: the {height}x{width} feature map is too small to max-pool; "
            "use fewer downsampling blocks"
        )
    out = block["out"] if kind == "transition" else channels
    return out, height // 2, width // 2


def _block_params(block: dict[str, Any]) -> int:
    kind, bias = block["type"], block.get("bias", False)
    if kind == "maxpool":
        return 0
    cin, cout = block["in"], block["out"]
    bn = 2 * cout * block.get("bn", False)  # BatchNorm's weight and bias; transition has none
    if kind == "conv":
        return cin * cout * 9 + cout * bias + bn
    if kind == "pointwise":
        return cin * cout + cout * bias + bn
    if kind == "separable":
        return cin * 9 + cin * bias + cin * cout + cout * bias + bn
    return cin * cout + cout * bias  # transition


def _block_macs(
    block: dict[str, Any], before: tuple[int, int, int], after: tuple[int, int, int]
) -> int:
    kind = block["type"]
    if kind == "maxpool":
        return 0
    cin, cout = block["in"], block["out"]
    _, height, width = after
    if kind == "conv":
        return cin * cout * 9 * height * width
    if kind == "separable":
        return (cin * 9 + cin * cout) * height * width
    if kind == "transition":  # the 1x1 conv runs before the pool, at the input's size
        _, height, width = before
    return cin * cout * height * width


def _block_activations(
    block: dict[str, Any], before: tuple[int, int, int], after: tuple[int, int, int]
) -> int:
    kind = block["type"]
    if kind == "maxpool":
        return 0
    _, height, width = after
    if kind == "transition":  # the 1x1 conv writes its map before the pool
        _, height, width = before
    depthwise = block["in"] * height * width if kind == "separable" else 0
    return depthwise + block["out"] * height * width


def _head_weights(head: dict[str, Any], last: tuple[int, int, int]) -> int:
    """Weights of the head's conv or linear layer (biases left out)."""
    _, height, width = last
    if head["type"] == "conv3_gap":
        return head["in"] * NUM_CLASSES * 9
    if head["type"] == "flatten_linear":
        return head["in"] * height * width * NUM_CLASSES
    return head["in"] * NUM_CLASSES


def _head_pixels(head: dict[str, Any], last: tuple[int, int, int]) -> int:
    """Where the head's layer runs: a conv before the pooling at every pixel of the last
    map (conv3_gap pads it), a layer after the pooling or flattening once."""
    _, height, width = last
    return height * width if head["type"] in ("conv_gap", "conv3_gap") else 1


def analyse(spec: Spec) -> Analysis:
    """Exact trainable parameter count, MACs, shapes and receptive fields of a spec.

    The counts are analytic (no module is built), so the search can reject a candidate
    over the budget or the compute caps before spending anything on it. Receptive fields
    follow the usual recurrence: a 3x3 conv adds 2 * jump, a 2x2 max-pool adds jump and doubles it.
    """
    spec = normalise(spec)
    shape = INPUT_SHAPE
    rf, jump = 1, 1
    shapes, fields, block_params, block_macs = [], [], [], []
    activations = 0
    for index, block in enumerate(spec["blocks"]):
        before, shape = shape, _block_output(block, shape, _where(index, block["type"]))
        block_macs.append(_block_macs(block, before, shape))
        activations += _block_activations(block, before, shape)
        if block["type"] in ("conv", "separable"):
            rf += 2 * jump
        elif block["type"] in ("transition", "maxpool"):
            rf += jump
            jump *= 2
        shapes.append(shape)
        fields.append(rf)
        block_params.append(_block_params(block))
    head = spec["head"]
    head_params = _head_weights(head, shape) + NUM_CLASSES * head["bias"]
    head_macs = _head_weights(head, shape) * _head_pixels(head, shape)
    activations += NUM_CLASSES * _head_pixels(head, shape)
    if head["type"] == "conv3_gap":
        rf += 2 * jump
    return Analysis(
        params=sum(block_params) + head_params,
        block_params=block_params,
        head_params=head_params,
        shapes=shapes,
        receptive_fields=fields,
        macs=sum(block_macs) + head_macs,
        block_macs=block_macs,
        head_macs=head_macs,
        activations=activations,
        head_receptive_field=rf,
    )


def param_count(spec: Spec) -> int:
    """Exact number of trainable parameters of the network ``build(spec)`` returns."""
    return analyse(spec).params


def mac_count(spec: Spec) -> int:
    """Exact multiply-accumulates of one image's forward pass through ``build(spec)``."""
    return analyse(spec).macs


def activation_count(spec: Spec) -> int:
    """Values the conv and linear layers of ``build(spec)`` write for one image."""
    return analyse(spec).activations


def compact(spec: Spec) -> Spec:
    """The normalised spec without the options added later (``bn``, ``dropout_kind``, a
    pointwise block's ``padding``, a max-pool's ``dropout``) where they hold their default:
    a spec written before those options existed comes out exactly as it was written."""
    spec = normalise(spec)
    blocks = []
    for block in spec["blocks"]:
        defaults = _BLOCK_FIELDS[block["type"]]
        quiet = {k for k in _LATER_OPTIONS[block["type"]] if block[k] == defaults[k]}
        blocks.append({k: v for k, v in block.items() if k not in quiet})
    return {"blocks": blocks, "head": spec["head"]}


def to_json(spec: Spec) -> str:
    """Canonical JSON of the normalised spec (sorted keys), for storage and comparison."""
    return json.dumps(normalise(spec), sort_keys=True)


def from_json(text: str) -> Spec:
    """Parse and normalise a spec from JSON text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"spec is not valid JSON: {error}") from None
    return normalise(copy.deepcopy(data))
