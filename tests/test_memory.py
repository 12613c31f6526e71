"""A net too large to train is refused up front, from its spec, with one line and exit 2;
the estimate behind it, and what counts as the CPU running out of memory."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
import torch

import search.engine.memory
from search.cli import main
from search.engine.memory import (
    EVAL_BATCH,
    available_bytes,
    check_memory,
    is_cpu_out_of_memory,
    memory_need,
    out_of_memory_reason,
)
from search.errors import UsageError
from space import ZOO

HUGE = {"blocks": [{"type": "conv", "out": 100_000}], "head": {"type": "gap_linear"}}


def conv_net(channels: int) -> dict:
    return {
        "blocks": [
            {"type": "conv", "out": channels},
            {"type": "separable", "out": channels, "dropout": 0.1},
            {"type": "transition", "out": 16},
            {"type": "conv", "out": 16},
        ],
        "head": {"type": "gap_linear"},
    }


def test_the_reference_nets_need_well_under_a_gigabyte() -> None:
    for name, spec in ZOO.items():
        need = memory_need(spec, 128)
        assert 10e6 < need.train < 1e9 and need.evaluate < 1e9, name


def test_the_estimate_grows_with_width_and_batch_and_covers_the_activations() -> None:
    small, wide = memory_need(conv_net(16), 128), memory_need(conv_net(64), 128)
    assert wide.train > 3 * small.train and wide.evaluate > 3 * small.evaluate
    assert memory_need(conv_net(64), 256).train > 1.8 * wide.train
    # At least the conv block's output and the ReLU's, float32, for the whole batch.
    assert memory_need(HUGE, 128).train > 2 * 128 * 100_000 * 28 * 28 * 4
    assert memory_need(HUGE, 128).evaluate > EVAL_BATCH * 100_000 * 28 * 28 * 4


def test_check_memory_names_the_need_the_batch_and_what_is_available(monkeypatch) -> None:
    monkeypatch.setattr(search.engine.memory, "available_bytes", lambda device: 2_000_000_000)
    with pytest.raises(UsageError) as error:
        check_memory(conv_net(256), 128, "cpu")
    message = str(error.value)
    assert message.startswith("this net needs about ") and "\n" not in message
    assert "to train at batch 128" in message
    assert "more than the 2.0 GB available on cpu" in message
    assert message.endswith("; use fewer channels")
    assert check_memory(ZOO["ref7676"], 128, "cpu").train < 2e9  # a small net passes
    monkeypatch.setattr(search.engine.memory, "available_bytes", lambda device: None)
    check_memory(HUGE, 128, "cpu")  # unknown: no refusal on a guess


def test_available_bytes_on_cpu_and_on_a_faked_cuda_card(monkeypatch) -> None:
    free = available_bytes("cpu")
    assert free is None or free > 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * 10**9, 16 * 10**9))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * 10**9)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * 10**9)
    assert available_bytes("cuda") == 6 * 10**9  # free, plus torch's cache it can reuse


def test_a_container_limit_caps_what_is_available(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    assert search.engine.memory._cgroup_available(tmp_path) is None  # no limit
    (tmp_path / "memory.max").write_text(f"{4 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{3 * 2**30}\n")
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {2**30}\n")
    assert search.engine.memory._cgroup_available(tmp_path) == 2 * 2**30  # page cache reclaimable
    assert search.engine.memory._cgroup_available(tmp_path / "nowhere") is None


def test_train_refuses_a_spec_too_large_with_one_line_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "huge.json"
    spec.write_text(json.dumps(HUGE))
    empty = tmp_path / "no-mnist"  # the check comes before the data is even looked for
    empty.mkdir()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    code = main(["train", str(spec), "--device", "cpu", "--data-dir", str(empty)])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("budgetnas train: error: this net needs about ")
    assert "to train at batch 128" in err and err.rstrip().endswith("use fewer channels")
    assert seconds < 5
    # Nothing of the ~40 GB a training step at batch 128 would take was allocated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 500 * 1024


def test_what_counts_as_the_cpu_running_out_of_memory() -> None:
    with pytest.raises(RuntimeError) as error:  # 400 TB: malloc refuses it at once
        torch.empty(10**14)
    assert is_cpu_out_of_memory(error.value)
    reason = out_of_memory_reason(error.value)
    assert reason.startswith("out of memory (CPU): can't allocate memory: you tried to allocate")
    assert "enforce fail" not in reason
    assert is_cpu_out_of_memory(MemoryError())
    assert out_of_memory_reason(MemoryError()) == (
        "out of memory (CPU): MemoryError (batch or widths too large)"
    )
    assert not is_cpu_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_cpu_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert not is_cpu_out_of_memory(ValueError("can't allocate memory"))
