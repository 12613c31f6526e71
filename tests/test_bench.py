"""The benchmark: what it prints and writes, its conventional Dataset, its input checks.

Timing is never asserted on: these machines are shared, and a benchmark that fails
when a neighbour is busy tests nothing.
"""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from real_mnist import DATA, needs_data

from search.bench.conventional import AffineMNIST, pil_affine
from search.bench.speed import benchmark
from search.cli.bench_commands import add_bench_arguments as add_arguments
from search.cli.bench_commands import cmd_bench as run
from search.engine.train import Recipe
from search.errors import UsageError

SPEEDUP = re.compile(r"speedup: (\d+(?:\.\d+)?)x")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def digits(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Blocky fake digits: a bright square off-centre, so any warp moves pixels."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 6:16, 9:20] = 255
    return images, np.arange(n) % 10


@needs_data
def test_a_tiny_run_prints_every_line_ends_in_the_speedup_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = ["--steps", "2", "--models", "ref7676", "--workers", "1", "--device", "cpu"]
    assert run(parse([*args, "--data-dir", DATA, "--out", str(out)])) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("machine: ") and "torch " in lines[0] and "device cpu" in lines[0]
    assert any("extrapolated from those 2 steps" in line for line in lines)
    assert any(line.startswith("ref7676 (7,676 params)") for line in lines)
    for label in ("engine, 1 trial x", "conventional, 1 trial, num_workers=0"):
        row = next(line for line in lines if line.strip().startswith(label))
        assert "img/s" in row and "s/epoch" in row and "min/15 epochs" in row
    assert any("engine vs best conventional: " in line for line in lines)
    assert any("engine, 1 trial x 1 thread" in line and "trials/hour" in line for line in lines)
    last = SPEEDUP.fullmatch(lines[-1])
    assert last is not None, lines[-1]
    assert float(last.group(1)) > 0

    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["machine"]["device"] == "cpu"
    model = result["models"]["ref7676"]
    assert model["params"] == 7676 and model["ratio"] > 0
    assert model["engine"]["images_per_s"] > 0
    assert model["engine"]["training_s"] == pytest.approx(15 * model["engine"]["epoch_s"])
    assert {r["label"] for r in model["conventional"]} >= {"conventional, 1 trial, num_workers=0"}
    assert result["search"]["workers"] == 1 and len(result["search"]["engine"]) == 2
    assert f"{result['speedup']:.2f}" == last.group(1)


def test_the_conventional_dataset_warps_each_image_afresh_keeping_shape_and_range() -> None:
    images, labels = digits()
    dataset = AffineMNIST(images, labels)
    assert len(dataset) == 8
    x, y = dataset[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    assert 0 <= x.min() and x.max() <= 1
    warps = [dataset[3][0] for _ in range(5)]
    assert any(not torch.equal(warps[0], w) for w in warps[1:]), "the same warp every call"
    assert not all(torch.equal(w, to_tensor_of(images[3])) for w in warps), "never warped"


def test_the_conventional_dataset_without_augmentation_is_plain_to_tensor() -> None:
    images, labels = digits()
    still = AffineMNIST(images, labels, Recipe(rotate=0, translate=0, scale=0))
    assert torch.equal(still[0][0], to_tensor_of(images[0]))


def test_pil_affine_shifts_by_whole_pixels_as_asked() -> None:
    from PIL import Image

    image = Image.fromarray(digits()[0][0])
    moved = np.array(pil_affine(image, 0.0, (2.0, 3.0), 1.0))
    assert np.array_equal(moved[3 + 6 : 3 + 16, 2 + 9 : 2 + 20], np.full((10, 11), 255))
    assert moved.sum() == np.array(image).sum()  # nothing fell off the edge


def to_tensor_of(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).unsqueeze(0).float() / 255


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "ref7676,lenet"], "unknown model 'lenet'"),
        (["--models", ","], "--models needs at least one"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--steps", "-3"], "--steps must be a positive integer"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--device", "tpu"], "device must be auto, cpu or cuda"),
        (["--out", "/no/such/folder/bench.json"], "folder /no/such/folder does not exist"),
    ],
)
def test_bad_input_is_a_usage_error_before_any_data_is_read(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    # The data folder is empty: a check that ran after loading would raise DataError.
    with pytest.raises(UsageError, match=re.escape(message)):
        run(parse([*argv, "--data-dir", str(tmp_path)]))


def test_the_function_checks_its_input_too(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown model"):
        benchmark(models=["nope"], data_dir=tmp_path)
    with pytest.raises(UsageError, match="--steps"):
        benchmark(steps=0, data_dir=tmp_path)


@needs_data
def test_the_step_benchmark_times_both_paths_per_net_and_thread_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    argv = ["--step", "--steps", "1", "--rounds", "2", "--models", "ref7676", "--threads", "1"]
    argv += ["--candidates", "2"]
    assert run(parse([*argv, "--data-dir", DATA, "--out", str(out)])) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    assert any(line.startswith("FLOP bound: ") and "GFLOP/s on 1 thread" in line for line in lines)
    assert any(
        line.startswith("augmentation of a batch on 1 thread: F.affine_grid") for line in lines
    )
    assert any(
        line.startswith("BatchNorm of 128 activations, forward + backward") for line in lines
    )
    row = next(line for line in lines if line.startswith("ref7676 "))
    assert row.split()[1] == "7,676" and row.split()[3] == "1"  # params, threads
    assert any(line.startswith("Spearman's rho of s/epoch: with MACs") for line in lines)
    assert lines[-1].startswith("smallest speedup on 1 thread: ") and "(ref7676)" in lines[-1]

    result = json.loads(out.read_text())
    (timing,) = result["rows"]
    assert timing["net"] == "ref7676" and timing["params"] == 7676 and timing["threads"] == 1
    assert (
        timing["plain_epoch_s"] > 0 and timing["fast_epoch_s"] > 0 and timing["bound_epoch_s"] > 0
    )
    assert timing["speedup"] == pytest.approx(timing["plain_epoch_s"] / timing["fast_epoch_s"])
    # Two rounds of each path; the reported figure is one of them (the median's lower middle).
    assert len(timing["plain_rounds"]) == len(timing["fast_rounds"]) == 2
    assert timing["plain_epoch_s"] == min(timing["plain_rounds"])
    assert timing["fast_epoch_s"] == min(timing["fast_rounds"])
    assert timing["plain_faults"] >= 0 and timing["fast_faults"] >= 0
    assert (
        result["augmentation_seconds"]["plain"] > 0 and result["augmentation_seconds"]["fast"] > 0
    )
    norms = result["batchnorm_seconds"]
    assert {n["channels"] for n in norms} == {4, 8, 14, 16, 22, 24}
    assert all(n["wide"] > 0 and n["native"] > 0 for n in norms)
    costs = result["candidates"]
    assert len(costs["candidates"]) == 2 and {c["budget"] for c in costs["candidates"]} == {
        4000,
        8000,
    }
    assert all(c["epoch_s"] > 0 and c["activations"] > 0 for c in costs["candidates"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "--step times the CPU step"),
        (["--threads", "1,x"], "--threads takes integers"),
        (["--threads", "0"], "--steps, --rounds and --threads need positive integers"),
        (["--steps", "0"], "--steps, --rounds and --threads need positive integers"),
        (["--rounds", "0"], "--steps, --rounds and --threads need positive integers"),
        (["--candidates", "-1"], "--candidates must be 0 or more"),
        (["--models", "nope"], "is neither a reference net"),
    ],
)
def test_bad_step_input_is_a_usage_error_before_any_data_is_read(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        run(parse(["--step", *argv, "--data-dir", str(tmp_path)]))
