"""The spec is the single source of truth: analytic counts and shapes must match torch."""

import ast
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from space import (
    ZOO,
    SpecError,
    activation_count,
    analyse,
    build,
    from_json,
    mac_count,
    module_source,
    normalise,
    param_count,
    to_json,
)
from space.spec import compact

MODELS = sorted((Path(__file__).parents[1] / "models").glob("*.py"))


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


HEADS = ["conv_gap", "conv3_gap", "gap_conv", "gap_linear", "flatten_linear"]


@st.composite
def specs(draw) -> dict:
    """Random specs over every block type, head type and option; some collapse, most are
    valid. The options added later are sometimes left out, so their defaults are covered."""

    def maybe(block: dict, key: str, values: st.SearchStrategy) -> None:
        value = draw(st.none() | values)
        if value is not None:
            block[key] = value

    blocks = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["conv", "pointwise", "separable", "transition", "maxpool"]))
        block = {"type": kind}
        if kind != "maxpool":
            block["out"] = draw(st.integers(1, 24))
            block["bias"] = draw(st.booleans())
        if kind in ("conv", "separable"):
            block["padding"] = draw(st.sampled_from([0, 1]))
        if kind == "pointwise":
            maybe(block, "padding", st.sampled_from([0, 1]))
        if kind in ("conv", "pointwise", "separable"):
            block["dropout"] = draw(st.sampled_from([0.0, 0.05, 0.2]))
            maybe(block, "bn", st.booleans())
        if kind == "maxpool":
            maybe(block, "dropout", st.sampled_from([0.0, 0.1]))
        if kind in ("conv", "pointwise", "separable", "maxpool"):
            maybe(block, "dropout_kind", st.sampled_from(["dropout", "dropout2d"]))
        blocks.append(block)
    head = {
        "type": draw(st.sampled_from(HEADS)),
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
    if spec["head"]["type"] in ("conv_gap", "conv3_gap"):  # the head conv sees the last map
        assert seen["shape"] == (2, channels, height, width)
    elif spec["head"]["type"] == "flatten_linear":
        assert seen["shape"] == (2, channels * height * width)
    else:
        assert seen["shape"][1] == channels
    layers = list(net.modules())
    blocks = normalise(spec)["blocks"]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in layers) == sum(
        b.get("bn", False) for b in blocks
    )
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in layers) == sum(
        b.get("dropout", 0) > 0 and b["dropout_kind"] == "dropout2d" for b in blocks
    )


def measured_macs(net: torch.nn.Module) -> int:
    """torch's own count for one image: it counts 2 FLOPs per multiply-accumulate of the
    conv and linear layers, and nothing for BatchNorm, ReLU or pooling."""
    with FlopCounterMode(display=False) as counter:
        net.eval()(torch.rand(1, 1, 28, 28))
    return counter.get_total_flops() // 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_analytic_macs_match_torchs_flop_counter(spec):
    try:
        analysis = analyse(spec)
    except SpecError:
        return
    assert analysis.macs == measured_macs(build(spec))
    assert analysis.macs == sum(analysis.block_macs) + analysis.head_macs


def measured_activations(net: torch.nn.Module) -> int:
    """Values the conv and linear layers write for one image, taken by forward hooks."""
    written = []

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        written.append(output[0].numel())

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    with torch.no_grad():
        net.eval()(torch.rand(1, 1, 28, 28))
    for handle in handles:
        handle.remove()
    return sum(written)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_analytic_activations_match_forward_hooks(spec):
    try:
        analysis = analyse(spec)
    except SpecError:
        return
    assert analysis.activations == measured_activations(build(spec))


@pytest.mark.parametrize(
    ("name", "activations"),
    [
        ("ref7676", 22_282),
        ("ref13010", 28_626),
        ("ref14874", 75_392),
        ("ref18594", 21_962),
        ("ref19354", 39_994),
    ],
)
def test_zoo_activations(name, activations):
    assert activation_count(ZOO[name]) == activations == measured_activations(build(ZOO[name]))


@pytest.mark.parametrize(
    ("name", "macs"),
    [
        ("ref7676", 1_136_688),
        ("ref13010", 2_361_568),
        ("ref14874", 1_963_392),
        ("ref18594", 1_863_104),
        ("ref19354", 3_548_384),
    ],
)
def test_zoo_macs(name, macs):
    assert mac_count(ZOO[name]) == macs == measured_macs(build(ZOO[name]))


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
    ("name", "published"),
    [
        ("ref7676", 7_676),
        ("ref13010", 13_010),
        ("ref14874", 14_874),
        ("ref18594", 18_594),
        ("ref19354", 19_354),
    ],
)
def test_zoo_reproduces_published_parameter_counts(name, published):
    assert param_count(ZOO[name]) == published
    assert trainable(build(ZOO[name])) == published


def test_ref14874_layer_by_layer():
    analysis = analyse(ZOO["ref14874"])
    # conv 1->16 + BN; 1x1 16->32 + BN; pool; dw 32 + pw 32->32 + BN; 1x1 32->64 + BN;
    # pool; dw 64 + pw 64->64 + BN; head 3x3 conv 64->10 with bias. No bias elsewhere.
    assert analysis.block_params == [144 + 32, 512 + 64, 0, 288 + 1024 + 64, 2048 + 128, 0, 4800]
    assert analysis.head_params == 5760 + 10
    assert [shape[1] for shape in analysis.shapes] == [28, 28, 14, 14, 16, 8, 8]  # 1x1 pads 14->16
    assert analysis.receptive_field == 26  # the head's 3x3 conv counts: GAP pools its output
    dropouts = [m for m in build(ZOO["ref14874"]).modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == []  # channel dropout only
    channel = [m.p for m in build(ZOO["ref14874"]).modules() if isinstance(m, torch.nn.Dropout2d)]
    assert channel == [0.1, 0.15]


def test_ref19354_layer_by_layer():
    analysis = analyse(ZOO["ref19354"])
    # every conv with bias; BN (2 per channel) from the third conv to the seventh
    assert analysis.block_params == [
        36 + 4,
        288 + 8,
        864 + 12 + 24,
        1728 + 16 + 32,
        0,
        2880 + 20 + 40,
        2880 + 16 + 32,
        0,
        2304 + 16 + 32,
        256 + 16,
    ]
    assert analysis.shapes[-1] == (16, 7, 7)
    assert analysis.head_params == 784 * 10 + 10  # flatten 16x7x7 -> linear
    net = build(ZOO["ref19354"])
    assert not hasattr(net, "gap")  # no pooling head: nothing unused left in the module
    assert isinstance(net.head, torch.nn.Linear) and net.head.in_features == 784


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_exported_source_is_the_built_module(spec):
    """The export writes every option the way build() builds it: same layers, same outputs
    from the same weights, in train mode (dropout kinds) and eval mode."""
    try:
        normalise(spec)
    except SpecError:
        return
    namespace: dict = {}
    exec(compile(module_source(spec, name="exported"), "exported.py", "exec"), namespace)
    torch.manual_seed(0)
    net = build(spec)
    exported = namespace["Net"]()
    exported.load_state_dict(net.state_dict())  # strict: same names, same shapes
    assert [type(m) for m in exported.modules()][1:] == [type(m) for m in net.modules()][1:]
    x = torch.rand(3, 1, 28, 28)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        getattr(exported, mode)()
        torch.manual_seed(1)
        expected = net(x)
        torch.manual_seed(1)
        assert torch.allclose(exported(x), expected, atol=1e-5)
    assert namespace["SPEC"] == compact(spec)
    assert normalise(namespace["SPEC"]) == normalise(spec)


def test_options_added_later_keep_old_specs_and_exports_as_they_were():
    old = {
        "blocks": [
            {"type": "conv", "out": 8, "padding": 0, "bias": False, "dropout": 0.1},
            {"type": "pointwise", "out": 12},
            {"type": "maxpool"},
            {"type": "transition", "out": 4},
        ],
        "head": {"type": "gap_conv"},
    }
    full = normalise(old)
    assert full["blocks"][0]["bn"] is True and full["blocks"][0]["dropout_kind"] == "dropout"
    assert full["blocks"][1]["padding"] == 0
    assert full["blocks"][2] == {"type": "maxpool", "dropout": 0.0, "dropout_kind": "dropout"}
    assert compact(old)["blocks"] == [
        {"type": "conv", "in": 1, "out": 8, "padding": 0, "bias": False, "dropout": 0.1},
        {"type": "pointwise", "in": 8, "out": 12, "bias": False, "dropout": 0.0},
        {"type": "maxpool"},
        {"type": "transition", "in": 12, "out": 4, "bias": False},
    ]
    assert normalise(compact(old)) == full


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_shipped_models_export_byte_for_byte_as_before(path):
    """Regenerating a shipped module from its SPEC gives the same SPEC literal and the same
    Net class, so the options added since changed nothing for the nets exported before."""
    text = path.read_text()
    literal = text[text.index("SPEC = ") : text.index("METRICS = ")]
    source = module_source(ast.literal_eval(literal.removeprefix("SPEC = ")), name=path.stem)
    assert source[source.index("SPEC = ") : source.index("METRICS = ")] == literal
    assert source[source.index("class Net(") :] == text[text.index("class Net(") :]


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
        (
            {"blocks": [{"type": "conv", "out": 4, "bn": 1}], "head": {"type": "gap_conv"}},
            "'bn' must be true or false",
        ),
        (
            {
                "blocks": [{"type": "maxpool", "dropout": 0.1, "dropout_kind": "spatial"}],
                "head": {"type": "gap_conv"},
            },
            "'dropout_kind' must be one of",
        ),
        (
            {
                "blocks": [{"type": "transition", "out": 4, "bn": True}],
                "head": {"type": "gap_conv"},
            },
            "unknown key",
        ),
    ],
)
def test_invalid_specs_raise_clear_errors(spec, message):
    with pytest.raises(SpecError, match=message):
        normalise(spec)
