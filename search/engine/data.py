"""MNIST on the device, with loud failures and a test set that search cannot see.

The files are read straight from torchvision's on-disk layout with a small IDX
parser, so nothing here needs torchvision (which is often absent or broken next
to CPU-only torch). Every check a malformed file could fail raises `DataError`
instead of handing training a silently wrong tensor.
"""

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
SIDE = 28
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for pair in FILES.values() for name in pair]


class DataError(Exception):
    """A problem with the MNIST files; the message is one line saying what to do."""


@dataclass
class Split:
    """Images (uint8, N x 28 x 28) and labels (int64, N), both already on the device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the explicit value, else $BUDGETNAS_DATA, else ./data."""
    return Path(data_dir or os.environ.get("BUDGETNAS_DATA") or "data")


def search_data(
    data_dir: str | Path | None,
    device: str | torch.device,
    val_size: int = 10_000,
    seed: int = 0,
    train_subset: int | None = None,
) -> tuple[Split, Split]:
    """(fit, validation) carved from the 60k training files only.

    The test files are never opened, so nothing the search selects on can leak
    test information. Validation is the last `val_size` of a seeded permutation
    and `train_subset` keeps the first N of it, so subsets are nested and do not
    move when `val_size` changes.
    """
    images, labels = _load(resolve_data_dir(data_dir), "train")
    n = len(labels)
    if not 1 <= val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (got {val_size})")
    order = _permutation(n, seed)
    fit, val = order[: n - val_size], order[n - val_size :]
    fit = fit[: _check_subset(train_subset, len(fit))]
    return _split(images, labels, fit, device), _split(images, labels, val, device)


def confirm_data(
    data_dir: str | Path | None,
    device: str | torch.device,
    train_subset: int | None = None,
    seed: int = 0,
) -> tuple[Split, Split]:
    """(all 60k training images or a seeded subset of N, the 10k test set) for final runs."""
    data_dir = resolve_data_dir(data_dir)
    images, labels = _load(data_dir, "train")
    keep = _permutation(len(labels), seed)[: _check_subset(train_subset, len(labels))]
    test_images, test_labels = _load(data_dir, "t10k")
    test = Split(test_images.to(device), test_labels.to(device))
    return _split(images, labels, keep, device), test


def _check_subset(train_subset: int | None, available: int) -> int:
    if train_subset is None:
        return available
    if not 1 <= train_subset <= available:
        raise ValueError(f"train_subset must be between 1 and {available} (got {train_subset})")
    return train_subset


def _permutation(n: int, seed: int) -> torch.Tensor:
    # A private generator: the split depends on `seed` alone, not on global RNG state.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _split(
    images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, device: str | torch.device
) -> Split:
    return Split(images[index].to(device), labels[index].to(device))


def _load(data_dir: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked (images, labels) CPU tensors for "train" or "t10k"."""
    raw = data_dir / "MNIST" / "raw"
    image_name, label_name = FILES[prefix]
    if _find(raw, image_name) is None or _find(raw, label_name) is None:
        _download(data_dir)
    images_path, labels_path = _find(raw, image_name), _find(raw, label_name)
    images = _read_images(images_path)
    labels = _read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels;"
            " the pair must come from the same MNIST release"
        )
    return images, labels


def _find(raw: Path, name: str) -> Path | None:
    # Prefer the uncompressed file: torchvision leaves both and it is faster to read.
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path.resolve()
    return None


def _download(data_dir: Path) -> None:
    raw = (data_dir / "MNIST" / "raw").resolve()
    missing = [name for name in ALL_FILES if _find(raw, name) is None]
    how = (
        f"put the four files {', '.join(ALL_FILES)} (.gz or not) in {raw}"
        " or point --data-dir / BUDGETNAS_DATA at a folder holding MNIST/raw/"
    )
    try:
        # Optional, and it can fail with any error (not just ImportError) next to CPU torch.
        import torchvision
    except Exception:
        raise DataError(
            f"MNIST files missing ({', '.join(missing)}) and torchvision is unavailable"
            f" to download them: {how}"
        ) from None
    try:
        torchvision.datasets.MNIST(root=data_dir, download=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"MNIST download failed ({reason}): {how}") from error


@cache
def _read_images(path: Path) -> torch.Tensor:
    # Cached per path so that every trial in a process shares one parse of the gz.
    data = _read_bytes(path)
    magic, count, rows, cols = _header(path, data, 4)
    if magic != IMAGES_MAGIC:
        raise DataError(f"{path} is not an IDX image file (magic {magic}, expected {IMAGES_MAGIC})")
    if (rows, cols) != (SIDE, SIDE):
        raise DataError(f"{path} has {rows}x{cols} images, expected {SIDE}x{SIDE} MNIST digits")
    pixels = _body(path, data, 16, count * rows * cols)
    return torch.from_numpy(pixels.reshape(count, rows, cols))


@cache
def _read_labels(path: Path) -> torch.Tensor:
    data = _read_bytes(path)
    magic, count = _header(path, data, 2)
    if magic != LABELS_MAGIC:
        raise DataError(f"{path} is not an IDX label file (magic {magic}, expected {LABELS_MAGIC})")
    labels = _body(path, data, 8, count)
    if labels.size and labels.max() > 9:
        raise DataError(f"{path} has label {labels.max()}; MNIST labels are 0..9")
    return torch.from_numpy(labels.astype(np.int64))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} cannot be read ({error}); delete it and fetch it again") from None


def _header(path: Path, data: bytes, fields: int) -> tuple[int, ...]:
    if len(data) < 4 * fields:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its IDX header")
    return struct.unpack(f">{fields}I", data[: 4 * fields])


def _body(path: Path, data: bytes, offset: int, size: int) -> np.ndarray:
    if len(data) != offset + size:
        raise DataError(
            f"{path} is {len(data)} bytes but its header declares {offset + size}"
            f" ({'truncated' if len(data) < offset + size else 'trailing data'}); fetch it again"
        )
    # Copy so the tensor owns writable memory instead of aliasing the bytes object.
    return np.frombuffer(data, dtype=np.uint8, offset=offset).copy()
