"""Memory a spec needs to train, and memory the device has: refuse a net too large to
train with one line, before anything is allocated.

The estimate is analytic, from the spec's shapes (``space.analyse``), like the parameter
count: no module is built. It counts what autograd keeps for the backward pass (each
layer's input, BatchNorm the conv's output, ReLU its own, dropout its mask, max-pool its
int64 indices), the gradients alive at once during the backward pass,
the weights with their gradients and optimizer state, and the evaluation's batch. It is
meant to catch nets that cannot train at all (a conv with 100,000 channels wants hundreds
of GB), not to fill memory to the last byte; the search still fails a trial that runs
out of memory anyway, with the reason recorded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from search.errors import UsageError
from space import analyse, normalise
from space.spec import INPUT_SHAPE, Spec

FLOAT = 4  # bytes: training keeps float32 master weights and float32 activations on CPU
# Weights, their gradients and up to two optimizer states (Adam's moments; SGD has one).
PARAM_COPIES = 4
# Activation gradients alive at once in the backward pass, in units of the largest map.
BACKWARD_MAPS = 2
EVAL_BATCH = 1000  # search.engine.train.evaluate's batch
EVAL_MAPS = 3  # a layer's input, its output and BatchNorm's, under inference mode
OVERHEAD = 1.2  # allocator rounding and fragmentation
GB = 1e9


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a spec needs: to train at ``batch`` and to evaluate at ``EVAL_BATCH``."""

    batch: int
    train: int
    evaluate: int

    @property
    def peak(self) -> int:
        return max(self.train, self.evaluate)


def memory_need(spec: Spec, batch: int) -> MemoryNeed:
    """Estimated bytes to train ``spec`` at ``batch`` images a step (and evaluate it)."""
    spec = normalise(spec)
    analysis = analyse(spec)
    image = math.prod(INPUT_SHAPE)
    saved = 2 * image  # the input and its normalised copy
    largest = image
    before = INPUT_SHAPE
    for block, after in zip(spec["blocks"], analysis.shapes, strict=True):
        kind, size = block["type"], math.prod(after)
        if kind == "maxpool":
            maps = [3 * size]  # output + int64 indices
        elif kind == "transition":  # a 1x1 conv at the input's size, then the pool
            maps = [block["out"] * before[1] * before[2], 3 * size]
        else:
            # BatchNorm keeps the conv's output, ReLU its own (BatchNorm's output is freed).
            maps = [size * block["bn"], size]
            if kind == "separable":
                maps.append(block["in"] * after[1] * after[2])  # the depthwise conv's output
        if block.get("dropout", 0) > 0:
            maps.append(size + size // FLOAT)  # output + bool mask
        saved += sum(maps)
        largest = max(largest, *maps)
        before = after
    weights = PARAM_COPIES * analysis.params * FLOAT
    train = weights + batch * (saved + BACKWARD_MAPS * largest) * FLOAT
    evaluate = analysis.params * FLOAT + EVAL_BATCH * EVAL_MAPS * largest * FLOAT
    return MemoryNeed(batch, int(train * OVERHEAD), int(evaluate * OVERHEAD))


def available_bytes(device: str | torch.device) -> int | None:
    """Memory free for a new allocation on ``device``; None when it cannot be told.

    CUDA: the card's free memory plus what torch has cached but not handed out. CPU:
    /proc/meminfo's MemAvailable (else free physical pages from sysconf), capped by a
    cgroup v2 limit (a container's) less the cgroup's memory in use that it cannot
    reclaim (page cache it can).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(known) if known else None


def check_memory(spec: Spec, batch: int, device: str | torch.device) -> MemoryNeed:
    """Raise UsageError (one line) when ``spec`` needs more memory than ``device`` has."""
    need = memory_need(spec, batch)
    available = available_bytes(device)
    if available is not None and need.peak > available:
        what = f"to train at batch {batch}"
        if need.evaluate > need.train:
            what += f" (and evaluate at batch {EVAL_BATCH})"
        raise UsageError(
            f"this net needs about {_gb(need.peak)} GB {what}, more than the "
            f"{_gb(available)} GB available on {torch.device(device).type}; use fewer channels"
        )
    return need


def is_cpu_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the CPU running out of memory: Python's MemoryError, or torch's
    CPU allocator failing ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(error, MemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "DefaultCPUAllocator" in message or "can't allocate memory" in message
    )


def out_of_memory_reason(error: BaseException) -> str:
    """The fail_reason of a trial that ran out of CPU memory: what the allocator said."""
    message = (str(error).strip().splitlines() or [""])[0]
    message = message.split("DefaultCPUAllocator: ")[-1]  # drop "[enforce fail at ...]"
    return f"out of memory (CPU): {message or type(error).__name__} (batch or widths too large)"


def _gb(n: int) -> str:
    return f"{n / GB:,.1f}"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None  # e.g. macOS, which has no SC_AVPHYS_PAGES


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text())
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines())
        reclaimable = int(stat.get("inactive_file", 0))
        return max(0, int(limit) - used + reclaimable)
    except (OSError, ValueError):
        return None
