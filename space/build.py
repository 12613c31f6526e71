"""Build the nn.Module that a spec describes.

Layer names (``conv3``, ``bn3``, ``drop3``, ``dw4``, ``pw4``, ``head``...) are the ones
the exported source uses, so a state_dict moves between a built network and its
exported ``Net`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from space.spec import NUM_CLASSES, Spec, analyse, normalise

# Inputs arrive as ToTensor gives them, in [0, 1]; the network normalises itself so that
# a user of an exported model needs nothing but the module.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class SpecNet(nn.Module):
    """A network built from a spec; ``forward`` takes N x 1 x 28 x 28 floats in [0, 1]."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = normalise(spec)
        for i, block in enumerate(self.spec["blocks"], start=1):
            kind = block["type"]
            if kind != "maxpool":
                self._add_convs(i, block)
            if block.get("dropout", 0) > 0:
                self.add_module(f"drop{i}", dropout_layer(block))
        head = self.spec["head"]
        if head["type"] != "flatten_linear":
            self.gap = nn.AdaptiveAvgPool2d(1)  # global average pooling, a module as users expect
        if head["dropout"] > 0:
            self.head_drop = nn.Dropout(head["dropout"])
        cin, bias = head["in"], head["bias"]
        if head["type"] == "gap_linear":
            self.head = nn.Linear(cin, NUM_CLASSES, bias=bias)
        elif head["type"] == "flatten_linear":
            _, height, width = analyse(self.spec).shapes[-1]
            self.head = nn.Linear(cin * height * width, NUM_CLASSES, bias=bias)
        elif head["type"] == "conv3_gap":
            self.head = nn.Conv2d(cin, NUM_CLASSES, 3, padding=1, bias=bias)
        else:
            self.head = nn.Conv2d(cin, NUM_CLASSES, 1, bias=bias)

    def _add_convs(self, i: int, block: dict) -> None:
        kind, cin, cout, bias = block["type"], block["in"], block["out"], block["bias"]
        if kind == "conv":
            self.add_module(
                f"conv{i}", nn.Conv2d(cin, cout, 3, padding=block["padding"], bias=bias)
            )
        elif kind == "separable":
            self.add_module(
                f"dw{i}",
                nn.Conv2d(cin, cin, 3, padding=block["padding"], groups=cin, bias=bias),
            )
            self.add_module(f"pw{i}", nn.Conv2d(cin, cout, 1, bias=bias))
        elif kind == "pointwise":
            self.add_module(
                f"conv{i}", nn.Conv2d(cin, cout, 1, padding=block["padding"], bias=bias)
            )
        else:  # transition
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 1, bias=bias))
        if block.get("bn", False):
            self.add_module(f"bn{i}", nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MNIST_MEAN) / MNIST_STD
        for i, block in enumerate(self.spec["blocks"], start=1):
            kind = block["type"]
            if kind == "maxpool":
                x = F.max_pool2d(x, 2)
            elif kind == "transition":
                x = F.max_pool2d(self[f"conv{i}"](x), 2)
            else:
                x = (
                    self[f"pw{i}"](self[f"dw{i}"](x))
                    if kind == "separable"
                    else self[f"conv{i}"](x)
                )
                if block["bn"]:
                    x = self[f"bn{i}"](x)
                x = F.relu(x)
            if block.get("dropout", 0) > 0:
                x = self[f"drop{i}"](x)
        head = self.spec["head"]
        if head["type"] in ("conv_gap", "conv3_gap"):
            x = self.gap(self._head(x))
        elif head["type"] == "flatten_linear":
            x = self._head(x)
        else:
            x = self._head(self.gap(x))
        return x.flatten(1)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec["head"]["type"] in ("gap_linear", "flatten_linear"):
            x = x.flatten(1)
        if self.spec["head"]["dropout"] > 0:
            x = self.head_drop(x)
        return self.head(x)

    def __getitem__(self, name: str) -> nn.Module:
        return self.get_submodule(name)


def dropout_layer(block: dict) -> nn.Module:
    """The dropout layer a block's ``dropout`` and ``dropout_kind`` ask for."""
    if block["dropout_kind"] == "dropout2d":
        return nn.Dropout2d(block["dropout"])
    return nn.Dropout(block["dropout"])


def build(spec: Spec) -> SpecNet:
    """The nn.Module for ``spec`` (validated first, so a bad spec raises SpecError)."""
    return SpecNet(spec)
