"""Write a spec (and optionally its trained weights) as a standalone Python module.

The module imports only torch and reads like a hand-written model: one attribute per
layer and an explicit ``forward``, so users can drop it into their code and edit it.
Its layer names match ``space.build``'s, which is what lets the weights load unchanged.
"""

from __future__ import annotations

import math
import os
import pprint
import tempfile
from pathlib import Path
from typing import Any

import torch

from space.build import MNIST_MEAN, MNIST_STD
from space.spec import INPUT_SHAPE, Spec, analyse, compact, normalise


def _init_lines(spec: Spec) -> list[str]:
    lines = []
    for i, block in enumerate(spec["blocks"], start=1):
        kind = block["type"]
        if kind != "maxpool":
            lines += _conv_lines(i, block)
        if block.get("dropout", 0) > 0:
            layer = "Dropout2d" if block["dropout_kind"] == "dropout2d" else "Dropout"
            lines.append(f"self.drop{i} = nn.{layer}({block['dropout']})")
    head = spec["head"]
    if head["type"] != "flatten_linear":
        lines.append("self.gap = nn.AdaptiveAvgPool2d(1)")
    if head["dropout"] > 0:
        lines.append(f"self.head_drop = nn.Dropout({head['dropout']})")
    cin, bias = head["in"], head["bias"]
    if head["type"] == "gap_linear":
        lines.append(f"self.head = nn.Linear({cin}, 10, bias={bias})")
    elif head["type"] == "flatten_linear":
        _, height, width = analyse(spec).shapes[-1]
        lines.append(f"self.head = nn.Linear({cin * height * width}, 10, bias={bias})")
    elif head["type"] == "conv3_gap":
        lines.append(f"self.head = nn.Conv2d({cin}, 10, 3, padding=1, bias={bias})")
    else:
        lines.append(f"self.head = nn.Conv2d({cin}, 10, 1, bias={bias})")
    return lines


def _conv_lines(i: int, block: dict[str, Any]) -> list[str]:
    kind, cin, cout, bias = block["type"], block["in"], block["out"], block["bias"]
    if kind == "conv":
        lines = [
            f"self.conv{i} = nn.Conv2d({cin}, {cout}, 3, padding={block['padding']}, bias={bias})"
        ]
    elif kind == "separable":
        lines = [
            f"self.dw{i} = nn.Conv2d({cin}, {cin}, 3, padding={block['padding']}, groups={cin}, bias={bias})",
            f"self.pw{i} = nn.Conv2d({cin}, {cout}, 1, bias={bias})",
        ]
    elif kind == "pointwise" and block["padding"]:
        lines = [f"self.conv{i} = nn.Conv2d({cin}, {cout}, 1, padding=1, bias={bias})"]
    else:
        lines = [f"self.conv{i} = nn.Conv2d({cin}, {cout}, 1, bias={bias})"]
    if block.get("bn", False):
        lines.append(f"self.bn{i} = nn.BatchNorm2d({cout})")
    return lines


def _forward_lines(spec: Spec) -> list[str]:
    analysis = analyse(spec)
    lines = ["x = (x - MEAN) / STD"]
    shape = INPUT_SHAPE
    for i, block in enumerate(spec["blocks"], start=1):
        kind = block["type"]
        if kind == "maxpool":
            expr = "F.max_pool2d(x, 2)"
        elif kind == "transition":
            expr = f"F.max_pool2d(self.conv{i}(x), 2)"
        else:
            conv = f"self.pw{i}(self.dw{i}(x))" if kind == "separable" else f"self.conv{i}(x)"
            expr = f"F.relu(self.bn{i}({conv}))" if block["bn"] else f"F.relu({conv})"
        if block.get("dropout", 0) > 0:
            expr = f"self.drop{i}({expr})"
        after = analysis.shapes[i - 1]
        rf = analysis.receptive_fields[i - 1]
        lines.append(f"x = {expr}  # {_shape(shape)} -> {_shape(after)}, RF {rf}")
        shape = after
    head = spec["head"]
    drop = "self.head_drop(x)" if head["dropout"] > 0 else "x"
    if head["type"] == "conv_gap":
        lines.append(f"x = self.gap(self.head({drop}))  # -> 10x1x1")
    elif head["type"] == "conv3_gap":
        rf = analysis.receptive_field
        lines.append(
            f"x = self.gap(self.head({drop}))  # -> 10x{_shape(shape[1:])}, RF {rf} -> 10x1x1"
        )
    elif head["type"] == "flatten_linear":
        lines.append(f"x = x.flatten(1)  # {_shape(shape)} -> {math.prod(shape)}")
        lines.append(f"x = self.head({drop})  # -> 10")
    elif head["type"] == "gap_conv":
        lines.append("x = self.gap(x)")
        lines.append(f"x = self.head({drop})  # -> 10x1x1")
    else:
        lines.append("x = self.gap(x).flatten(1)")
        lines.append(f"x = self.head({drop})  # -> 10")
    lines.append("return x.flatten(1)")
    return lines


def _spec_literal(spec: Spec) -> str:
    spec = compact(spec)  # options at their defaults left out: short, and stable across versions
    blocks = "".join(f"        {block!r},\n" for block in spec["blocks"])
    return f"{{\n    'blocks': [\n{blocks}    ],\n    'head': {spec['head']!r},\n}}"


def _shape(shape: tuple[int, int, int]) -> str:
    return "x".join(str(n) for n in shape)


def _metrics_summary(metrics: dict[str, Any]) -> str:
    if not metrics:
        return "Untrained: no measured figures."
    parts = []
    if "test_accuracy_mean" in metrics:
        parts.append(f"mean test accuracy {metrics['test_accuracy_mean']:.2f}%")
    if "test_accuracy_min" in metrics:
        parts.append(f"min {metrics['test_accuracy_min']:.2f}%")
    if "test_accuracy" in metrics:
        seeds = ", ".join(f"{a:.2f}" for a in metrics["test_accuracy"])
        parts.append(f"per seed [{seeds}]")
    if "epochs" in metrics:
        parts.append(f"final epoch of {metrics['epochs']}")
    if "budget" in metrics:
        parts.append(f"budget {metrics['budget']:,} parameters")
    return "Measured: " + ", ".join(parts) + "." if parts else "Measured: see METRICS."


def module_source(
    spec: Spec, *, name: str = "Net", origin: str = "", metrics: dict[str, Any] | None = None
) -> str:
    """Python source of a standalone module for ``spec``: ``Net``, ``PARAMS``, ``SPEC``,
    ``METRICS`` and ``load()``, which reads the weights from the ``.pt`` file beside it."""
    spec = normalise(spec)
    metrics = metrics or {}
    analysis = analyse(spec)
    init = "\n".join("        " + line for line in _init_lines(spec))
    forward = "\n".join("        " + line for line in _forward_lines(spec))
    origin_line = f"\n{origin}\n" if origin else ""
    return f'''"""{name}: a {analysis.params:,}-parameter MNIST network exported by budgetnas.
{origin_line}
{_metrics_summary(metrics)}
Receptive field {analysis.receptive_field}x{analysis.receptive_field}, {analysis.macs:,} multiply-accumulates per image. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from {name} import load
    net = load()              # weights from {name}.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = {analysis.params}
SPEC = {_spec_literal(spec)}
METRICS = {pprint.pformat(metrics, sort_dicts=False, width=88, indent=1)}

MEAN, STD = {MNIST_MEAN}, {MNIST_STD}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
{init}

    def forward(self, x):
{forward}


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    weights = Path(__file__).with_suffix(".pt")
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {{weights}}: this module was exported untrained")
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
'''


def export_module(
    spec: Spec,
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, Any] | None = None,
    origin: str = "",
    force: bool = False,
) -> Path:
    """Write ``path`` (a .py module) and, with weights, the ``.pt`` file beside it.

    Both files are written to temporary names first and renamed at the end, so a failure
    leaves nothing half-written. An existing target is refused unless ``force``.
    """
    path = Path(path)
    if path.suffix != ".py":
        raise ValueError(f"export target must end in .py, got {path}")
    if not path.stem.isidentifier():
        raise ValueError(f"export target {path.name} is not an importable module name")
    weights_path = path.with_suffix(".pt")
    targets = [path] + ([weights_path] if state_dict is not None else [])
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} already exists; pass --force to overwrite it")
    source = module_source(spec, name=path.stem, origin=origin, metrics=metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        staged.append((stage_file(path, lambda f: f.write(source.encode())), path))
        if state_dict is not None:
            cpu_state = {k: v.detach().cpu() for k, v in state_dict.items()}
            staged.append(
                (stage_file(weights_path, lambda f: torch.save(cpu_state, f)), weights_path)
            )
    except BaseException:
        for temp, _ in staged:
            os.unlink(temp)
        raise
    for temp, final in staged:
        os.replace(temp, final)
    if state_dict is None and weights_path.exists() and force:
        weights_path.unlink()  # stale weights of an older export would not match this Net
    return path


def stage_file(final: Path, write) -> str:
    """Write a temporary file beside ``final`` through ``write(binary file)`` and return
    its path, for an ``os.replace`` once every file of an export is written."""
    fd, temp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); an export is an ordinary file for its users.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException:
        os.unlink(temp)
        raise
    return temp
