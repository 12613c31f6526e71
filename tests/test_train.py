"""The training engine: augmentation, determinism, callbacks, divergence, and one real run."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.engine.augment import random_affine, sampling_grid
from search.engine.data import Split, confirm_data
from search.engine.train import (
    EpochStats,
    NonFiniteLoss,
    Recipe,
    evaluate,
    resolve_device,
    train,
)
from space import ZOO, build


def fake_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, 10, (n,), generator=g))


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the caller owns model init, as the engine documents
    return build(ZOO["ref7676"])


def test_augmentation_off_returns_the_input_untouched() -> None:
    x = torch.rand(4, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert random_affine(x, g) is x
    assert torch.equal(g.get_state(), state)  # no random numbers spent either


def test_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    x = torch.rand(16, 1, 28, 28)
    a, b, c = (
        random_affine(x, torch.Generator().manual_seed(s), rotate=8, translate=0.1, scale=0.08)
        for s in (0, 0, 1)
    )
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_the_sampling_grid_is_affine_grids_to_float_rounding() -> None:
    """The engine's grid is F.affine_grid's, so the plain and the fast step warp alike."""
    theta = torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(0))
    for size in ((28, 28), (20, 28), (5, 3)):
        expected = F.affine_grid(theta, [32, 1, *size], align_corners=False)
        grid = sampling_grid(theta, torch.Size(size))
        assert grid.shape == expected.shape
        torch.testing.assert_close(grid, expected, rtol=0, atol=2e-6)
    x = torch.rand(16, 1, 28, 28)
    warped = [
        random_affine(x, torch.Generator().manual_seed(3), 8, 0.1, 0.08, textbook_grid=textbook)
        for textbook in (False, True)
    ]
    torch.testing.assert_close(warped[0], warped[1], rtol=0, atol=1e-5)


def test_translation_moves_a_digit_by_at_most_the_given_fraction() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 12:16, 12:16] = 1  # a centred square; its centre of mass is at 13.5
    y = random_affine(x, torch.Generator().manual_seed(0), translate=0.1)
    coords = torch.arange(28.0)
    centre_x = (y.sum(dim=2) * coords).sum(dim=(1, 2)) / y.sum(dim=(1, 2, 3))
    assert (centre_x - 13.5).abs().max() <= 0.1 * 28 + 0.5
    assert (centre_x - 13.5).abs().max() > 1  # and it does move some of them


def run(seed: int = 0, **recipe) -> tuple:
    fit, val = fake_split(512), fake_split(200, seed=1)
    result = train(model(seed), fit, val, Recipe(**{"epochs": 2, **recipe}), seed=seed)
    return result, [(e.epoch, e.train_loss, e.accuracy) for e in result.epochs]


def test_training_is_deterministic_on_cpu() -> None:
    first, numbers = run(seed=0)
    second, again = run(seed=0)
    assert numbers == again
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert run(seed=1)[1] != numbers
    assert first.device == "cpu" and first.accuracy == first.epochs[-1].accuracy


def test_state_dict_is_a_cpu_copy_of_the_trained_model() -> None:
    fit, val = fake_split(256), fake_split(100, seed=1)
    trained = model()
    result = train(trained, fit, val, Recipe(epochs=1))
    fresh = model(seed=5)
    fresh.load_state_dict(result.state_dict)
    assert evaluate(fresh, val) == result.accuracy
    next(iter(result.state_dict.values())).zero_()  # must not write through to the model
    assert next(iter(trained.state_dict().values())).abs().sum() > 0


@pytest.mark.parametrize(
    ("optimizer", "schedule", "lr"),
    [("sgd", "step", 0.05), ("adam", "onecycle", 3e-3), ("adamw", "step", 3e-3)],
)
def test_every_optimizer_and_schedule_runs(optimizer: str, schedule: str, lr: float) -> None:
    _, numbers = run(epochs=1, optimizer=optimizer, schedule=schedule, lr=lr, label_smoothing=0.1)
    assert torch.isfinite(torch.tensor(numbers[0][1]))


def test_on_epoch_sees_every_epoch_and_can_stop_training() -> None:
    fit, val = fake_split(256), fake_split(100, seed=1)
    seen: list[EpochStats] = []
    train(model(), fit, val, Recipe(epochs=3, batch_size=64), on_epoch=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3] and all(s.seconds > 0 for s in seen)

    class Pruned(Exception):
        pass

    calls: list[int] = []

    def prune(stats: EpochStats) -> None:
        calls.append(stats.epoch)
        raise Pruned

    with pytest.raises(Pruned):
        train(model(), fit, val, Recipe(epochs=3, batch_size=64), on_epoch=prune)
    assert calls == [1]


def test_diverging_loss_raises_non_finite_loss() -> None:
    with pytest.raises(NonFiniteLoss, match=r"at epoch 1, step \d+"):
        run(optimizer="sgd", lr=1e10, schedule="step")


def test_progress_goes_to_stderr(capsys) -> None:
    fit, val = fake_split(256), fake_split(100, seed=1)
    train(model(), fit, val, Recipe(epochs=1, batch_size=64), progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "img/s" in captured.err and captured.out == ""


def test_evaluate_counts_percent_correct_and_keeps_the_mode() -> None:
    class AlwaysThree(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.eye(10)[3])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(len(x), 10)

    split = Split(torch.zeros(8, 28, 28, dtype=torch.uint8), torch.tensor([3, 3, 1, 3, 0, 0, 0, 0]))
    net = AlwaysThree().train()
    assert evaluate(net, split, batch_size=3) == 37.5
    assert net.training


def test_evaluation_runs_in_exact_float32_and_restores_the_tf32_settings() -> None:
    """On a card, PyTorch's default TF32 convolutions would round evaluation's inputs."""
    seen: list[tuple[bool, bool]] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return self.logits.expand(len(x), 10)

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    evaluate(Spy(), fake_split(8))
    assert seen == [(False, False)]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize(
    "fields",
    [{"optimizer": "rmsprop"}, {"schedule": "cosine"}, {"epochs": 0}, {"lr": 0}, {"rotate": -1}],
)
def test_recipe_rejects_bad_values(fields: dict) -> None:
    with pytest.raises(ValueError):
        Recipe(**fields)


def test_recipe_round_trips_through_json() -> None:
    recipe = Recipe(optimizer="adamw", lr=3e-3, rotate=0, translate=0, scale=0)
    assert Recipe(**json.loads(json.dumps(dataclasses.asdict(recipe)))) == recipe


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_one_epoch_on_10k_real_images_beats_95_percent() -> None:
    data_dir = os.environ.get("BUDGETNAS_DATA")
    if not data_dir or not any((Path(data_dir) / "MNIST" / "raw").glob("t10k-labels-idx1-ubyte*")):
        pytest.skip("real MNIST not found: set BUDGETNAS_DATA to a folder holding MNIST/raw/")
    fit, test = confirm_data(data_dir, "cpu", train_subset=10_000)
    # Batch 32 gives one epoch 312 steps, enough for the default schedule to get going.
    result = train(model(), fit, test, Recipe(epochs=1, batch_size=32))
    assert result.accuracy > 95
