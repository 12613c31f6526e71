"""``budgetnas check``: what a network is made of, and rules it must obey in a user's CI.

For any TARGET (see ``search.own_model.target``) it reports the trainable parameters, whether the
network has BatchNorm, dropout, global average pooling (GAP) and a fully connected layer,
its receptive field, its multiply-accumulates (MACs) per image and its output shape.

A spec-based network's figures come from the spec (``space.analyse``: exact, no module
needed). For a module of yours they are measured on one forward pass:

- BatchNorm, dropout, fully connected: a layer of that kind among the module's layers
  (``nn.BatchNorm1d/2d/3d``, any ``nn.Dropout*``, ``nn.Linear``); dropout also counts
  when ``forward`` calls ``F.dropout``/``F.dropout2d`` itself.
- GAP: an average over the whole of a feature map bigger than 1x1, however ``forward``
  does it (``nn.AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``,
  an ``avg_pool2d`` as big as the map).
- Receptive field: the conv and pool operations (modules or functional calls) are
  traced in the order ``forward`` runs them, at the level of torch's operators, and the
  usual recurrence is applied: RF += (kernel - 1) x dilation x jump, jump x= stride. It
  is that of the map the global pooling averages (or of the last map, without one). It
  is reported as unknown where the network is not one chain of them: two convs that
  read the same tensor (parallel branches), a map resized by anything but a conv or a
  pool, a transposed or non-2D conv, or a spatial operation after the global pooling.
- MACs: ``torch.utils.flop_counter.FlopCounterMode`` on one image, MACs = FLOPs / 2
  (convolutions and matrix products; BatchNorm, activations and pooling count zero, as
  in ``space.analyse``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from search.errors import UsageError
from search.own_model.target import Target, load_target
from space import analyse

INPUT = (1, 28, 28)
RULES: dict[str, str] = {
    "bn": "BatchNorm",
    "dropout": "dropout",
    "gap": "global average pooling",
    "fc": "fully connected layer (nn.Linear)",
}

# Operators (torch's aten names) that the receptive-field trace understands ...
_CONV = {"convolution"}
_POOLS = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_ADAPTIVE = {"_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}
_REDUCTIONS = {"mean", "amax"}  # over both spatial dims: a global pooling
_PADS = {"constant_pad_nd", "reflection_pad2d", "replication_pad2d", "pad"}
# ... and the ones that resize a map in ways the trace does not follow.
_RESIZES = {
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "upsample_bicubic2d",
    "_upsample_nearest_exact2d",
    "grid_sampler_2d",
    "im2col",
    "col2im",
    "pixel_shuffle",
    "pixel_unshuffle",
}
_SPATIAL = _CONV | _POOLS | _ADAPTIVE | _REDUCTIONS | _PADS | _RESIZES
# What F.dropout, F.dropout2d and friends run in training mode.
_DROPOUT_OPS = {"native_dropout", "dropout", "feature_dropout", "bernoulli", "bernoulli_"}


@dataclass(frozen=True)
class Inspection:
    """What ``check`` found out about one network."""

    name: str
    kind: str  # "reference net", "spec", "budgetnas export" or "your module"
    params: int  # trainable
    macs: int  # per image
    activations: int  # per image: values the conv and linear layers write
    receptive_field: int | None  # None: unknown
    rf_note: str  # where the figure comes from, or why it is unknown
    output_shape: tuple[int, ...]  # for one 1x28x28 image
    found: dict[str, str]  # rule -> what was found ("" when absent)

    def has(self, rule: str) -> bool:
        return bool(self.found[rule])


@dataclass(frozen=True)
class Verdict:
    """One rule of the command line and whether the network obeys it."""

    rule: str  # as written: "--budget 8,000", "--require bn", "--forbid fc"
    passed: bool
    reason: str


def parse_rules(text: str | None, option: str) -> tuple[str, ...]:
    """``"bn,dropout"`` -> ``("bn", "dropout")``; an unknown name is a UsageError."""
    names = tuple(n.strip().lower() for n in (text or "").split(",") if n.strip())
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise UsageError(
            f"{option}: unknown rule {unknown[0]!r}; rules are {', '.join(RULES)} "
            f"(comma-separated, e.g. {option} bn,gap)"
        )
    return tuple(dict.fromkeys(names))


def parse_require_forbid(
    require: str | None, forbid: str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Both rule lists, checked; a rule both required and forbidden is a UsageError."""
    required, forbidden = parse_rules(require, "--require"), parse_rules(forbid, "--forbid")
    both = [rule for rule in required if rule in forbidden]
    if both:
        raise UsageError(f"rule {both[0]!r} is both in --require and in --forbid; keep one")
    return required, forbidden


def inspect_target(target: Target) -> Inspection:
    """Measure ``target``: from its spec where it has one, else by running it."""
    net = target.build()
    try:
        found, rf, note, output_shape = _trace(net)
        macs = measure_macs(net)
        activations = measure_activations(net)
    except Exception as error:  # e.g. a forward that only works in eval mode
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise UsageError(
            f"{target.name} failed when run to measure it ({message}); its forward must take "
            "N x 1 x 28 x 28 images in training and in eval mode"
        ) from None
    params = trainable_parameters(net)  # after the forward passes: lazy layers are set up
    if target.spec is not None:
        analysis = analyse(target.spec)
        params, macs, activations = analysis.params, analysis.macs, analysis.activations
        rf, note = analysis.receptive_field, "from the spec"
    return Inspection(
        target.name, target.kind, params, macs, activations, rf, note, output_shape, found
    )


def trainable_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _forward_one_image(net: nn.Module) -> None:
    """One random image through ``net`` in eval mode, leaving its mode as it was."""
    was_training = net.training
    with torch.no_grad():
        net.eval()(torch.rand(1, *INPUT))
    net.train(was_training)


def measure_macs(net: nn.Module) -> int:
    """Multiply-accumulates of one image's forward pass, as torch's flop counter sees it."""
    with FlopCounterMode(display=False) as counter:
        _forward_one_image(net)
    return counter.get_total_flops() // 2


def measure_activations(net: nn.Module) -> int:
    """Values the conv and linear layers write for one image, taken by forward hooks:
    what sets a small net's time per epoch on a CPU (``space.Analysis.activations``)."""
    written = []
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [
        layer.register_forward_hook(lambda m, i, output: written.append(output[0].numel()))
        for layer in layers
    ]
    _forward_one_image(net)
    for hook in hooks:
        hook.remove()
    return sum(written)


def judge(
    inspection: Inspection,
    *,
    budget: int | None = None,
    require: tuple[str, ...] = (),
    forbid: tuple[str, ...] = (),
) -> list[Verdict]:
    """The verdict on each rule given (rules as ``parse_require_forbid`` returns them)."""
    verdicts = []
    if budget is not None:
        over = inspection.params > budget
        reason = (
            f"{inspection.params:,} parameters, {inspection.params - budget:,} over it"
            if over
            else f"{inspection.params:,} parameters"
        )
        verdicts.append(Verdict(f"--budget {budget:,}", not over, reason))
    for rule in require:
        has = inspection.has(rule)
        reason = inspection.found[rule] if has else f"no {RULES[rule]}"
        verdicts.append(Verdict(f"--require {rule}", has, reason))
    for rule in forbid:
        has = inspection.has(rule)
        reason = f"it has {inspection.found[rule]}" if has else f"no {RULES[rule]}"
        verdicts.append(Verdict(f"--forbid {rule}", not has, reason))
    return verdicts


def check(
    target: str, *, budget: int | None = None, require: str = "", forbid: str = ""
) -> tuple[Inspection, list[Verdict]]:
    """Load, inspect and judge a TARGET; bad input raises UsageError."""
    required, forbidden = parse_require_forbid(require, forbid)  # before any loading
    inspection = inspect_target(load_target(target))
    return inspection, judge(inspection, budget=budget, require=required, forbid=forbidden)


def render(inspection: Inspection, verdicts: list[Verdict]) -> str:
    """The report ``budgetnas check`` prints."""

    def answer(rule: str) -> str:
        return f"yes: {inspection.found[rule]}" if inspection.has(rule) else "no"

    rf = (
        f"{inspection.receptive_field}x{inspection.receptive_field} ({inspection.rf_note})"
        if inspection.receptive_field is not None
        else f"unknown ({inspection.rf_note})"
    )
    rows = [
        ("trainable parameters", f"{inspection.params:,}"),
        ("BatchNorm", answer("bn")),
        ("dropout", answer("dropout")),
        ("global avg pooling", answer("gap")),
        ("fully connected", answer("fc")),
        ("receptive field", rf),
        ("MACs per image", f"{inspection.macs:,}"),
        ("activations", f"{inspection.activations:,} per image"),
        ("output shape", "x".join(map(str, inspection.output_shape)) + " for a 1x28x28 input"),
    ]
    rows += [(v.rule, f"{'pass' if v.passed else 'FAIL'}: {v.reason}") for v in verdicts]
    width = max(len(label) for label, _ in rows)
    lines = [f"{inspection.name} ({inspection.kind})"]
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    failed = [v.rule for v in verdicts if not v.passed]
    if failed:
        lines.append(f"check failed: {', '.join(failed)}")
    elif verdicts:
        lines.append(f"check passed: {len(verdicts)} rule(s)")
    return "\n".join(lines)


# --- tracing one forward pass --------------------------------------------------------


class _Tracer(TorchDispatchMode):
    """Records the operators one forward pass runs, with their arguments by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.spatial: list[tuple[str, dict, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        self.names.add(name)
        if name in _SPATIAL:
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.spatial.append((name, _arguments(func, args, kwargs), first))
        return out


def _arguments(func, args: tuple, kwargs: dict) -> dict:
    values = {}
    for index, argument in enumerate(func._schema.arguments):
        if index < len(args):
            values[argument.name] = args[index]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            values[argument.name] = argument.default_value
    return values


def _trace(net: nn.Module) -> tuple[dict[str, str], int | None, str, tuple[int, ...]]:
    """(found, receptive field, its note, output shape for one image) of ``net``."""
    tracer = _Tracer()
    # Training mode, so that dropout called functionally shows; a fresh module, so that
    # BatchNorm's running statistics moving here harms nothing.
    with torch.no_grad(), tracer:
        net.train()(torch.rand(2, *INPUT))
    with torch.no_grad():
        output_shape = tuple(net.eval()(torch.rand(1, *INPUT)).shape)
    rf, note, gap = _receptive_field(tracer.spatial)
    layers = list(net.modules())
    found = {
        "bn": _count(layers, nn.modules.batchnorm._BatchNorm),
        "dropout": _count(layers, nn.modules.dropout._DropoutNd)
        or ("dropout called in forward" if _DROPOUT_OPS & tracer.names else ""),
        "gap": gap,
        "fc": ", ".join(
            f"Linear {m.in_features} -> {m.out_features}"
            for m in layers
            if isinstance(m, nn.Linear)
        ),
    }
    return found, rf, note, output_shape


def _count(layers: list[nn.Module], kind: type) -> str:
    counts: dict[str, int] = {}
    for layer in layers:
        if isinstance(layer, kind):
            counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in counts.items())


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = list(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _receptive_field(
    ops: list[tuple[str, dict, torch.Tensor]],
) -> tuple[int | None, str, str]:
    """(RF or None, note, GAP description or "") from the spatial operators in order."""
    expected = INPUT[1:]
    rf, jump = [1, 1], [1, 1]
    pooled: list[int] | None = None
    gap = ""
    read: list[torch.Tensor] = []  # kept alive, so no later tensor reuses their memory
    unknown = ""
    for name, args, out in ops:
        x = args.get("self", args.get("input"))
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            unknown = unknown or f"a {name} on a tensor that is not N x C x H x W"
            continue
        size = tuple(x.shape[2:])
        out_size = tuple(out.shape[2:]) if out.dim() == 4 else (1, 1)
        global_op = _is_global(name, args, x, out)
        if global_op and size != (1, 1):
            if name in ("mean", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "avg_pool2d"):
                gap = gap or f"average over the {size[0]}x{size[1]} map"
        if unknown:
            continue
        if pooled is not None:
            if size != (1, 1):
                unknown = f"a {name} after the global pooling"
            continue
        if size != expected:
            unknown = "the network is not one chain of conv and pool layers"
            continue
        if any(x is seen for seen in read):
            unknown = "two layers read the same tensor (parallel branches)"
            continue
        read.append(x)
        if global_op:
            pooled = list(rf)
            continue
        if name in _REDUCTIONS:
            unknown = f"a {name} over part of a map"
            continue
        if name in _RESIZES or (name in _ADAPTIVE and out_size != size):
            unknown = f"{name} resizes the map"
            continue
        if name in _PADS or name in _ADAPTIVE:  # padding, or an adaptive pool that keeps the size
            expected = out_size
            continue
        if name in _CONV:
            if args.get("transposed"):
                unknown = "a transposed convolution"
                continue
            kernel = tuple(args["weight"].shape[2:])
            stride, dilation = _pair(args["stride"]), _pair(args["dilation"])
        else:
            kernel = _pair(args["kernel_size"])
            stride = _pair(args["stride"]) if args.get("stride") else kernel
            dilation = _pair(args.get("dilation", 1))
        for i in (0, 1):
            rf[i] += (kernel[i] - 1) * dilation[i] * jump[i]
            jump[i] *= stride[i]
        expected = out_size
    if unknown:
        return None, unknown, gap
    field = pooled or rf
    if field[0] != field[1]:
        return None, f"not square: {field[0]}x{field[1]}", gap
    return field[0], "traced through the conv and pool layers", gap


def _is_global(name: str, args: dict, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Does this operator pool a whole N x C x H x W map down to one value per channel?

    Averages (GAP) and adaptive pools do; a max-pool whose window happens to cover the
    map is a pool like any other, its window counted in the receptive field.
    """
    if name in _REDUCTIONS:
        dims = args.get("dim")
        if not dims:
            return False
        dims = {d % 4 for d in ([dims] if isinstance(dims, int) else dims)}
        return {2, 3} <= dims and 1 not in dims and 0 not in dims
    if name == "avg_pool2d" or name in _ADAPTIVE:
        return out.dim() == 4 and tuple(out.shape[2:]) == (1, 1)
    return False
