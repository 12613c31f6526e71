"""The spec is the single source of truth: analytic counts and shapes must match torch."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from space import ZOO, SpecError, analyse, build, from_json, normalise, param_count, to_json


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@st.composite
def specs(draw) -> dict:
    """Random specs over every block and head type; some collapse, most are valid."""
    blocks = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["conv", "pointwise", "separable", "transition", "maxpool"]))
        block = {"type": kind}
        if kind != "maxpool":
            block["out"] = draw(st.integers(1, 24))
            block["bias"] = draw(st.booleans())
        if kind in ("conv", "separable"):
            block["padding"] = draw(st.sampled_from([0, 1]))
        if kind in ("conv", "pointwise", "separable"):
            block["dropout"] = draw(st.sampled_from([0.0, 0.05, 0.2]))
        blocks.append(block)
    head = {
        "type": draw(st.sampled_from(["conv_gap", "gap_conv", "gap_linear"])),
        "bias": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.1])),
    }
    return {"blocks": blocks, "head": head}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_analytic_count_and_shapes_match_the_built_module(spec):
    try:
        analysis = analyse(spec)
    except SpecError:
        with pytest.raises(SpecError):
            build(spec)
        return
    net = build(spec)
    assert analysis.params == trainable(net)
    assert analysis.params == sum(analysis.block_params) + analysis.head_params
    seen = {}
    net.head.register_forward_pre_hook(lambda _, args: seen.update(shape=args[0].shape))
    out = net.eval()(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)
    channels, height, width = analysis.shapes[-1]
    if spec["head"]["type"] == "conv_gap":  # the head conv sees the last feature map itself
        assert seen["shape"] == (2, channels, height, width)
    else:
        assert seen["shape"][1] == channels


@settings(max_examples=100, deadline=None)
@given(specs())
def test_spec_round_trips_through_json(spec):
    try:
        text = to_json(spec)
    except SpecError:
        return
    assert from_json(text) == normalise(spec)
    assert json.loads(text) == json.loads(to_json(json.loads(text)))


@pytest.mark.parametrize(
    ("name", "published"), [("ref7676", 7_676), ("ref13010", 13_010), ("ref18594", 18_594)]
)
def test_zoo_reproduces_published_parameter_counts(name, published):
    assert param_count(ZOO[name]) == published
    assert trainable(build(ZOO[name])) == published


def test_ref7676_shapes_and_receptive_field():
    analysis = analyse(ZOO["ref7676"])
    assert analysis.shapes[2] == (16, 22, 22)
    assert analysis.shapes[3] == (8, 11, 11)  # the 1x1 + max-pool transition
    assert analysis.shapes[-1] == (16, 7, 7)
    assert analysis.receptive_fields == [3, 5, 7, 8, 12, 16, 20]


def test_separable_block_counts_depthwise_and_pointwise():
    spec = {
        "blocks": [{"type": "separable", "out": 8, "bias": True}],
        "head": {"type": "gap_linear", "bias": True},
    }
    # depthwise 1*9 + 1, pointwise 1*8 + 8, BN 16, linear 8*10 + 10
    assert param_count(spec) == 10 + 16 + 16 + 90


def test_collapsing_feature_map_names_the_block():
    spec = {"blocks": [{"type": "maxpool"}] * 5, "head": {"type": "gap_conv"}}
    with pytest.raises(SpecError, match=r"block 5 \(maxpool\).*too small"):
        analyse(spec)
    unpadded = {
        "blocks": [{"type": "conv", "out": 4, "padding": 0}] * 14,
        "head": {"type": "gap_conv"},
    }
    with pytest.raises(SpecError, match=r"block 14 \(conv\).*collapses"):
        analyse(unpadded)


def test_channels_that_do_not_chain_name_the_block():
    spec = {
        "blocks": [{"type": "conv", "out": 8}, {"type": "conv", "in": 4, "out": 8}],
        "head": {"type": "gap_conv"},
    }
    with pytest.raises(
        SpecError, match=r"block 2 \(conv\): 'in' is 4 but the previous block gives 8"
    ):
        analyse(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"blocks": [], "head": {"type": "gap_conv"}}, "non-empty"),
        ({"blocks": [{"type": "dense", "out": 3}], "head": {"type": "gap_conv"}}, "unknown type"),
        ({"blocks": [{"type": "conv"}], "head": {"type": "gap_conv"}}, "missing key"),
        (
            {"blocks": [{"type": "conv", "out": 0}], "head": {"type": "gap_conv"}},
            "positive integer",
        ),
        (
            {"blocks": [{"type": "conv", "out": 4, "padding": 2}], "head": {"type": "gap_conv"}},
            "0 or 1",
        ),
        (
            {"blocks": [{"type": "conv", "out": 4, "dropout": 1.0}], "head": {"type": "gap_conv"}},
            "dropout",
        ),
        (
            {"blocks": [{"type": "conv", "out": 4, "kernel": 5}], "head": {"type": "gap_conv"}},
            "unknown key",
        ),
        (
            {"blocks": [{"type": "conv", "out": 4}], "head": {"type": "softmax"}},
            "head: unknown type",
        ),
    ],
)
def test_invalid_specs_raise_clear_errors(spec, message):
    with pytest.raises(SpecError, match=message):
        normalise(spec)
