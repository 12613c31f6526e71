"""The engine's fast step computes what the plain PyTorch step computes.

Each change of the fast path is either the same maths in another memory layout or
the same random masks drawn another way; these tests check both claims on fixed
batches and fixed seeds, never on timings.
"""

import statistics

import pytest
import torch
from torch import nn

from search.engine.batchnorm import WideBatchNorm2d
from search.engine.data import Split
from search.engine.dropout import MAX_RATE, SparseDropout, dropped_positions
from search.engine.train import Recipe, fast_layers, train
from space import ZOO, build


def fake_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("p", [0.0036, 0.02, 0.1])
def test_dropped_positions_are_bernoulli_draws(p: float) -> None:
    n, runs = 50_000, 200
    g = torch.Generator().manual_seed(0)
    draws = [dropped_positions(n, p, g) for _ in range(runs)]
    for positions in draws:
        assert positions.dtype == torch.int64
        assert positions.min() >= 0 and positions.max() < n
        assert torch.equal(positions, positions.unique())  # sorted, each position once
    counts = [len(d) for d in draws]
    mean, sd = n * p, (n * p * (1 - p)) ** 0.5
    # Binomial(n, p): the mean of 200 counts within 4 standard errors, the spread within 20%.
    assert abs(statistics.mean(counts) - mean) < 4 * sd / runs**0.5
    assert 0.8 < statistics.stdev(counts) / sd < 1.2
    # Every tenth of the range is hit equally often, within 4 standard errors.
    tenths = torch.bincount(torch.cat(draws) * 10 // n, minlength=10).double()
    expected = sum(counts) / 10
    assert ((tenths - expected).abs() < 4 * expected**0.5).all()


def test_a_rate_near_zero_still_covers_the_whole_range() -> None:
    # The gaps are drawn in chunks; the last position must still be able to reach n - 1.
    g = torch.Generator().manual_seed(1)
    hits = torch.cat([dropped_positions(100, 0.5, g) for _ in range(200)])
    assert hits.max() == 99 and hits.min() == 0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_sparse_dropout_scales_kept_values_and_zeroes_the_same_gradients(layout) -> None:
    x = (torch.rand(16, 6, 9, 9) + 0.5).contiguous(memory_format=layout).requires_grad_()
    drop = SparseDropout(0.1).train()
    y = drop(x)
    assert y.is_contiguous(memory_format=layout)  # the next conv gets the layout it expects
    kept = y != 0
    assert 0.05 < 1 - kept.double().mean() < 0.15
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(dx[kept], grad[kept] / 0.9)
    assert (dx[~kept] == 0).all()


def test_sparse_dropout_is_the_identity_in_eval_mode_and_nn_dropout_above_its_rate() -> None:
    x = torch.rand(4, 3, 5, 5)
    assert SparseDropout(0.1).eval()(x) is x
    torch.manual_seed(0)
    expected = nn.Dropout(MAX_RATE + 0.1)(x)
    torch.manual_seed(0)
    assert torch.equal(SparseDropout(MAX_RATE + 0.1).train()(x), expected)


def test_fast_layers_change_only_plain_dropout_and_batchnorm_and_put_them_back() -> None:
    class Custom(nn.Dropout):
        pass

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.05), Custom(0.05), nn.Dropout2d(0.1)
    )
    before = [(module, type(module)) for module in model]
    with fast_layers(model) as changed:
        assert changed == 2
        assert [type(m) for m in model][1:3] == [WideBatchNorm2d, SparseDropout]
        assert model[2].p == 0.05 and type(model[3]) is Custom
        assert [m for m in model] == [m for m, _ in before]  # the same modules, weights and all
    assert [(m, type(m)) for m in model] == before


@pytest.mark.parametrize("shape, offset", [((32, 6, 9, 9), 0.0), ((16, 4, 12, 10), 5.0)])
def test_wide_batchnorm_computes_what_batchnorm_computes(shape, offset) -> None:
    """Outputs, the three gradients and the running statistics of two training steps, against
    nn.BatchNorm2d in float64; the offset makes the variance a small difference of sums."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 0.5 + offset
    grad = torch.randn(shape, generator=g)
    results = []
    for kind, dtype in ((nn.BatchNorm2d, torch.float64), (WideBatchNorm2d, torch.float32)):
        bn = kind(shape[1], momentum=0.3).to(dtype)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
            bn.bias.copy_(torch.linspace(-0.2, 0.3, shape[1]))
        for _ in range(2):
            xs = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
            out = bn(xs)
            out.backward(grad.to(dtype).contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last)
        results.append(
            [out, xs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]
        )
    reference, wide = results
    for a, b in zip(wide, reference, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    assert bn.num_batches_tracked == 2


def test_wide_batchnorm_leaves_evaluation_and_nchw_to_batchnorm() -> None:
    bn = WideBatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5)
    torch.testing.assert_close(bn.eval()(x), nn.BatchNorm2d(3).eval()(x))
    plain = nn.BatchNorm2d(3).train()
    torch.testing.assert_close(bn.train()(x), plain(x))  # NCHW: the native kernel
    torch.testing.assert_close(bn.running_var, plain.running_var)


@pytest.mark.parametrize("channels", [16, 24])
def test_wide_batchnorm_leaves_16_24_32_channels_to_batchnorm(channels: int) -> None:
    # Bit for bit the native kernel's output: the wide view's sums would round differently.
    x = torch.randn(8, channels, 5, 5).contiguous(memory_format=torch.channels_last)
    wide, plain = WideBatchNorm2d(channels).train(), nn.BatchNorm2d(channels).train()
    assert torch.equal(wide(x), plain(x))


@pytest.mark.parametrize("channels", [8, 12, 20])
def test_wide_batchnorm_takes_fewer_or_other_channel_counts(channels: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, channels, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    wide, plain = WideBatchNorm2d(channels).train(), nn.BatchNorm2d(channels).train()
    out = wide(x)
    torch.testing.assert_close(out, plain(x))
    assert not torch.equal(out, plain(x))


def shipped_like_spec(dropout: float) -> dict:
    """A small net with every kind of block the search samples, and dropout after each."""
    return {
        "blocks": [
            {"type": "conv", "out": 4, "padding": 1, "dropout": dropout},
            {"type": "conv", "out": 8, "padding": 0, "dropout": dropout},
            {"type": "maxpool"},
            {"type": "separable", "out": 12, "padding": 1, "bias": True, "dropout": dropout},
            {"type": "pointwise", "out": 8},
        ],
        "head": {"type": "conv_gap", "bias": True},
    }


@pytest.mark.parametrize(
    "spec", [ZOO["ref7676"], shipped_like_spec(0.0)], ids=["ref7676", "separable"]
)
def test_the_fast_step_trains_the_same_weights_as_the_plain_one(spec: dict) -> None:
    """Without dropout, the fast path differs only in memory layout: after one step, the
    same weights as plain PyTorch up to float rounding; over more steps, which amplify
    rounding as any training does, the same losses."""
    val = fake_split(200, seed=1)
    for images, epochs, tolerance in ((128, 1, 1e-5), (512, 2, None)):
        results = []
        for plain in (True, False):
            torch.manual_seed(0)
            recipe = Recipe(epochs=epochs)
            results.append(train(build(spec), fake_split(images), val, recipe, seed=0, plain=plain))
        plain, fast = results
        for a, b in zip(plain.epochs, fast.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        for name, weight in plain.state_dict.items():
            assert fast.state_dict[name].is_contiguous()  # saved and exported as plain tensors
            if tolerance is not None:
                torch.testing.assert_close(fast.state_dict[name], weight, rtol=0, atol=tolerance)


def test_the_fast_step_drops_at_the_rate_nn_dropout_does() -> None:
    """With dropout the masks differ draw by draw; the share of values dropped does not."""
    torch.manual_seed(0)
    model = build(shipped_like_spec(0.05))
    kept, dropped, kinds = [0], [0], set()

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Dropout) and module.training:
            kinds.add(type(module))
            live = inputs[0] != 0  # ReLU's zeros say nothing about the mask
            kept[0] += int((live & (output != 0)).sum())
            dropped[0] += int((live & (output == 0)).sum())

    hook = nn.modules.module.register_module_forward_hook(count)
    try:
        train(model, fake_split(1024), fake_split(10, seed=1), Recipe(epochs=1), seed=0)
    finally:
        hook.remove()
    assert kinds == {SparseDropout}  # the fast path drew the masks
    assert kept[0] > 100_000
    assert dropped[0] / (kept[0] + dropped[0]) == pytest.approx(0.05, abs=0.002)
    assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))


class FlattensWithView(nn.Module):
    """The way many hand-made MNIST nets flatten: ``view`` fails on channels_last memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.view(x.size(0), -1))


def test_a_model_that_needs_contiguous_memory_trains_as_it_is() -> None:
    fit, val = fake_split(256), fake_split(100, seed=1)
    losses = []
    for plain in (True, False):
        torch.manual_seed(0)
        model = FlattensWithView()
        result = train(model, fit, val, Recipe(epochs=1), seed=0, plain=plain)
        losses.append(result.epochs[0].train_loss)
        assert model.bn.num_batches_tracked == 2  # the layout probe trained nothing
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
