"""IDX parsing, loud failures on bad files, and splits that keep the test set out of search."""

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.engine.data import DataError, confirm_data, resolve_data_dir, search_data

N_TRAIN, N_TEST = 300, 50


def write_idx(path: Path, magic: int, dims: tuple[int, ...], body: bytes) -> None:
    data = struct.pack(f">{1 + len(dims)}I", magic, *dims) + body
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, gz: bool = True) -> Path:
    """Fake MNIST whose image i stores i in its first two pixels, so splits can be traced."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{ext}", 2051, (n, 28, 28), images.tobytes())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{ext}", 2049, (n,), labels.tobytes())
    return raw


def index_of(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0].long() + 256 * images[:, 0, 1].long()


def ids(images: torch.Tensor) -> set[int]:
    return set(index_of(images).tolist())


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gz_and_raw_idx(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    train, test = confirm_data(tmp_path, "cpu")
    assert train.images.shape == (N_TRAIN, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(train) == N_TRAIN
    assert len(test) == N_TEST and ids(test.images) == set(range(N_TEST))
    # The labels stay paired with their images (image i has label i % 10).
    assert torch.equal(train.labels, index_of(train.images) % 10)


def header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">{1 + len(dims)}I", magic, *dims)


TRAIN_IMAGES_GZ = gzip.compress(
    header(2051, N_TRAIN, 28, 28) + np.random.default_rng(0).bytes(N_TRAIN * 784)
)


def corrupt(raw: Path, name: str, data: bytes) -> None:
    (raw / name).write_bytes(data)


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("train-images-idx3-ubyte", lambda: header(2049, 1, 28, 28) + bytes(784), "magic"),
        ("train-labels-idx1-ubyte", lambda: header(2051, N_TRAIN) + bytes(N_TRAIN), "magic"),
        (
            "train-images-idx3-ubyte",
            lambda: header(2051, N_TRAIN, 28, 28) + bytes(100),
            "truncated",
        ),
        ("train-images-idx3-ubyte", lambda: header(2051, 3), "truncated"),
        ("train-labels-idx1-ubyte", lambda: header(2049, N_TRAIN) + bytes(N_TRAIN + 1), "trailing"),
        ("train-images-idx3-ubyte", lambda: header(2051, 2, 32, 32) + bytes(2048), "32x32"),
        ("train-labels-idx1-ubyte", lambda: header(2049, N_TRAIN) + bytes([10] * N_TRAIN), "0..9"),
        (
            "train-labels-idx1-ubyte",
            lambda: header(2049, N_TRAIN - 1) + bytes(N_TRAIN - 1),
            "labels",
        ),
        ("train-images-idx3-ubyte.gz", lambda: TRAIN_IMAGES_GZ[:-1000], "cannot be read"),
        ("train-images-idx3-ubyte.gz", lambda: b"not gzip at all", "cannot be read"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(
    tmp_path: Path, name: str, make, expected: str
) -> None:
    raw = write_mnist(tmp_path, gz=True)
    base = name.removesuffix(".gz")
    (raw / f"{base}.gz").unlink()
    corrupt(raw, name, make())
    with pytest.raises(DataError, match=expected) as error:
        search_data(tmp_path, "cpu", val_size=50)
    message = str(error.value)
    assert base in message and "\n" not in message


def test_missing_files_say_where_to_put_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails: no download
    raw = write_mnist(tmp_path)
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as error:
        search_data(tmp_path, "cpu", val_size=50)
    message = str(error.value)
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        assert f"{name}-idx" in message
    assert str(raw.resolve()) in message and "--data-dir" in message and "BUDGETNAS_DATA" in message
    assert "\n" not in message


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNAS_DATA", "/from/env")
    assert resolve_data_dir("/from/arg") == Path("/from/arg")
    assert resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("BUDGETNAS_DATA")
    assert resolve_data_dir(None) == Path("data")


def test_search_splits_are_disjoint_seeded_and_sized(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    fit, val = search_data(tmp_path, "cpu", val_size=60, seed=3)
    assert (len(fit), len(val)) == (N_TRAIN - 60, 60)
    assert ids(fit.images) | ids(val.images) == set(range(N_TRAIN))
    assert not ids(fit.images) & ids(val.images)
    again_fit, again_val = search_data(tmp_path, "cpu", val_size=60, seed=3)
    assert torch.equal(fit.images, again_fit.images) and torch.equal(val.labels, again_val.labels)
    assert ids(search_data(tmp_path, "cpu", val_size=60, seed=4)[1].images) != ids(val.images)

    small, small_val = search_data(tmp_path, "cpu", val_size=60, seed=3, train_subset=25)
    assert len(small) == 25 and torch.equal(small.images, fit.images[:25])
    assert torch.equal(small_val.images, val.images)  # a subset never touches validation


def test_search_data_never_opens_the_test_files(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    fit, val = search_data(tmp_path, "cpu", val_size=50)
    assert len(fit) + len(val) == N_TRAIN
    with pytest.raises(DataError, match="t10k-images"):
        confirm_data(tmp_path, "cpu")


def test_confirm_subset_is_seeded(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    a, test = confirm_data(tmp_path, "cpu", train_subset=40, seed=1)
    b, _ = confirm_data(tmp_path, "cpu", train_subset=40, seed=1)
    c, _ = confirm_data(tmp_path, "cpu", train_subset=40, seed=2)
    assert len(a) == 40 and len(test) == N_TEST
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize(
    "kwargs",
    [{"val_size": 0}, {"val_size": N_TRAIN}, {"train_subset": 0}, {"train_subset": N_TRAIN}],
)
def test_bad_split_arguments(tmp_path: Path, kwargs: dict) -> None:
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="between 1 and"):
        search_data(tmp_path, "cpu", **{"val_size": 50, **kwargs})


def real_data_dir() -> Path:
    data_dir = os.environ.get("BUDGETNAS_DATA")
    raw = Path(data_dir or "/nonexistent") / "MNIST" / "raw"
    if not data_dir or not any(raw.glob("t10k-labels-idx1-ubyte*")):
        pytest.skip("real MNIST not found: set BUDGETNAS_DATA to a folder holding MNIST/raw/")
    return Path(data_dir)


def test_real_mnist_loads() -> None:
    data_dir = real_data_dir()
    train, test = confirm_data(data_dir, "cpu")
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    # The published class counts: a wrong or reordered file would not match them.
    assert torch.bincount(train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert torch.bincount(test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    fit, val = search_data(data_dir, "cpu")
    assert (len(fit), len(val)) == (50_000, 10_000)
