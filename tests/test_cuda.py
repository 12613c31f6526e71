"""The CUDA path on a real card: data on the device, the card's autocast dtype, channels_last,
the loss check every CUDA_CHECK_EVERY steps, and each worker's share of the card's memory.

They run only where torch sees a CUDA device (``.ci/gpu`` runs them with the rest of the
suite there). The CPU suite fakes a card for the choices that only read it
(tests/test_precision.py, tests/test_memory.py); these check what only a card can.
"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from real_mnist import DATA, needs_data
from torch import nn

from search.engine.data import Split, confirm_data
from search.engine.train import (
    CUDA_CHECK_EVERY,
    NonFiniteLoss,
    Recipe,
    autocast_dtype,
    evaluate,
    precision_name,
    train,
)
from search.study.config import GPU_HEADROOM
from search.study.storage import open_storage
from space import ZOO, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def ref7676(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(ZOO["ref7676"])


def random_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images.to(CUDA), torch.randint(0, 10, (n,), generator=g).to(CUDA))


@needs_data
def test_a_real_training_on_the_card_scores_the_same_on_the_cpu() -> None:
    """Trained on the card in its autocast dtype and in channels_last, the weights score
    the same in fp32 whichever device evaluates them: the path does not move the result."""
    fit, test = confirm_data(DATA, CUDA, train_subset=10_000)
    assert fit.images.is_cuda and test.images.is_cuda
    model = ref7676()
    result = train(model, fit, test, Recipe(epochs=1, batch_size=32))
    assert result.device.startswith("cuda")
    assert result.precision == precision_name(autocast_dtype(CUDA))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert result.accuracy > 95
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    on_cpu = ref7676(seed=1)
    on_cpu.load_state_dict(result.state_dict)
    test_on_cpu = Split(test.images.cpu(), test.labels.cpu())
    assert abs(evaluate(on_cpu, test_on_cpu) - result.accuracy) <= 0.02  # 2 of 10,000 images


def test_fp16_with_loss_scaling_trains_to_a_finite_loss() -> None:
    """The older cards' path (fp16 autocast, GradScaler) runs on any card that has fp16."""
    result = train(ref7676(), random_split(1024), random_split(256, seed=1), Recipe(epochs=2),
                   precision="fp16")  # fmt: skip
    assert result.precision == "fp16"
    assert all(torch.isfinite(torch.tensor(e.train_loss)) for e in result.epochs)


def test_a_diverging_loss_stops_training_on_the_card() -> None:
    """The loss is checked every CUDA_CHECK_EVERY steps, not every step, and still caught."""
    steps = 1024 // 32
    assert steps > CUDA_CHECK_EVERY  # so that the check between steps runs too
    with pytest.raises(NonFiniteLoss, match=r"at epoch 1, step \d+"):
        train(ref7676(), random_split(1024), random_split(256, seed=1),
              Recipe(epochs=1, batch_size=32, lr=1e10, schedule="step"))  # fmt: skip


def test_a_worker_cannot_allocate_past_its_share_of_the_card() -> None:
    """share_gpu caps each of N workers' allocations at (1 - GPU_HEADROOM) / N of the card.
    In a child process: the cap is per process and would stay on for the other tests."""
    code = (
        "import torch\n"
        "from search.study.config import share_gpu\n"
        "device = torch.device('cuda')\n"
        "share_gpu(device, 4)\n"
        "print(torch.cuda.get_per_process_memory_fraction(device))\n"
        "total = torch.cuda.get_device_properties(device).total_memory\n"
        "share = torch.empty(int(total * 0.2), dtype=torch.uint8, device=device)\n"
        "try:\n"
        "    torch.empty(int(total * 0.1), dtype=torch.uint8, device=device)\n"
        "except torch.cuda.OutOfMemoryError:\n"
        "    print('out of memory past the share')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    fraction, verdict = run.stdout.splitlines()
    assert float(fraction) == pytest.approx((1 - GPU_HEADROOM) / 4)
    assert verdict == "out of memory past the share"


@needs_data
def test_two_workers_search_side_by_side_on_one_card(tmp_path: Path) -> None:
    """A short search with two worker processes on the card: every trial trains there, in
    the card's autocast dtype, and the run ends cleanly."""
    storage = f"sqlite:///{tmp_path}/studies.db"
    command = [
        sys.executable, "-m", "search.cli", "search", "--study", "gpu", "--budget", "8000",
        "--epochs", "1", "--trials", "6", "--workers", "2", "--pruner", "none",
        "--train-subset", "10000", "--val-size", "1000", "--no-confirm", "--no-transfer",
        "--device", "cuda", "--storage", storage, "--artifacts", str(tmp_path / "artifacts"),
        "--data-dir", DATA,
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    study = optuna.load_study(
        study_name="gpu", storage=open_storage(storage, heartbeat_interval=None)
    )
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trained) >= 2
    assert {t.user_attrs["device"] for t in trained} == {"cuda"}
    assert {t.user_attrs["precision"] for t in trained} == {precision_name(autocast_dtype(CUDA))}
    ran = [t for t in study.trials if "worker" in t.user_attrs]
    assert len({t.user_attrs["worker"] for t in ran}) == 2  # both processes trained
