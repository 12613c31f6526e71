"""Training precision follows the device: bf16 where the card computes it natively, fp16
with a GradScaler on older cards with tensor cores, fp32 on CPU; --precision overrides.

No GPU is needed: the card is faked through torch.cuda.get_device_capability and
torch.cuda.is_bf16_supported, the two calls the choice reads; the training runs are on
CPU, on a few hundred random images.
"""

from __future__ import annotations

import dataclasses
import io

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from real_mnist import DATA, needs_data

import search.engine.train
from search.cli import main
from search.engine.data import Split
from search.engine.train import Recipe, autocast_dtype, precision_name, train
from search.errors import UsageError
from search.study.config import GPU_HEADROOM, SearchConfig, check_precision, share_gpu
from search.study.confirm import Confirmation, confirm_study, confirmations
from space import ZOO, analyse, build, normalise

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def card(monkeypatch: pytest.MonkeyPatch):
    """fake(capability, bf16): make the current CUDA device look like such a card."""

    def fake(capability: tuple[int, int], bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)

    return fake


@pytest.mark.parametrize(
    ("name", "capability", "bf16", "expected"),
    [
        # A T4 "supports" bf16 by emulation (is_bf16_supported() is True), slower than fp32.
        ("T4", (7, 5), True, torch.float16),
        ("T4, older torch", (7, 5), False, torch.float16),
        ("V100", (7, 0), False, torch.float16),
        ("A100", (8, 0), True, torch.bfloat16),
        ("RTX 4090", (8, 9), True, torch.bfloat16),
        ("H100", (9, 0), True, torch.bfloat16),
        ("GTX 1080: no tensor cores", (6, 1), False, None),
    ],
)
def test_auto_picks_what_the_card_computes_natively(
    card, name: str, capability: tuple[int, int], bf16: bool, expected: torch.dtype | None
) -> None:
    card(capability, bf16)
    assert autocast_dtype(CUDA, "auto") is expected
    assert autocast_dtype("cuda:0") is expected  # "auto" is the default


def test_auto_is_fp32_on_cpu(card) -> None:
    card((9, 0), True)  # whatever a card would say, the CPU trains in fp32
    assert autocast_dtype(CPU, "auto") is None
    assert autocast_dtype("cpu") is None


def test_explicit_precisions_override_the_choice(card) -> None:
    card((8, 0), True)  # an A100
    assert autocast_dtype(CUDA, "fp16") is torch.float16
    assert autocast_dtype(CUDA, "fp32") is None
    assert autocast_dtype(CUDA, "bf16") is torch.bfloat16
    card((7, 5), True)  # a T4: bf16 only emulated, but it was asked for
    assert autocast_dtype(CUDA, "bf16") is torch.bfloat16
    card((7, 0), False)  # a card without bf16 at all
    with pytest.raises(ValueError, match="bf16 needs a CUDA device that supports it"):
        autocast_dtype(CUDA, "bf16")
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16  # slower on AVX2, but it works
    with pytest.raises(ValueError, match="fp16 is for CUDA devices"):
        autocast_dtype(CPU, "fp16")
    with pytest.raises(ValueError, match="must be one of auto, fp32, bf16, fp16"):
        autocast_dtype(CPU, "fp64")


def test_precision_names() -> None:
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == [
        "fp32",
        "bf16",
        "fp16",
    ]


def fake_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, 10, (n,), generator=g))


@pytest.fixture
def scalers(monkeypatch: pytest.MonkeyPatch) -> list[torch.amp.GradScaler]:
    """Every GradScaler that training makes, in order."""
    made: list[torch.amp.GradScaler] = []

    class Recorded(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.amp, "GradScaler", Recorded)
    return made


def tiny_training(precision: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    net = build(ZOO["ref7676"])
    recipe = Recipe(epochs=1, batch_size=64)
    return net, train(net, fake_split(256), fake_split(100, seed=1), recipe, precision=precision)


@pytest.mark.parametrize(("precision", "recorded"), [("auto", "fp32"), ("fp32", "fp32")])
def test_cpu_trains_in_fp32_without_loss_scaling(
    precision: str, recorded: str, scalers: list
) -> None:
    torch.manual_seed(0)
    before = build(ZOO["ref7676"]).state_dict()  # the init tiny_training starts from
    net, result = tiny_training(precision)
    assert result.precision == recorded and result.device == "cpu"
    assert [s.is_enabled() for s in scalers] == [False]  # a pass-through scaler
    assert torch.isfinite(torch.tensor(result.epochs[0].train_loss))
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert next(net.parameters()).dtype == torch.float32  # master weights stay fp32


def test_the_fp16_path_scales_the_loss_and_trains(
    monkeypatch: pytest.MonkeyPatch, scalers: list
) -> None:
    """What a T4 runs: fp16 autocast with a GradScaler. The choice refuses fp16 on CPU, so
    the test forces it; CPU autocast runs fp16 too, which exercises the scaler path."""
    monkeypatch.setattr(
        search.engine.train, "autocast_dtype", lambda device, precision: torch.float16
    )
    net, result = tiny_training("auto")
    assert result.precision == "fp16"
    [scaler] = scalers
    assert scaler.is_enabled() and scaler.get_scale() > 0
    assert torch.isfinite(torch.tensor(result.epochs[0].train_loss))
    assert 0 <= result.accuracy <= 100
    assert all(v.dtype != torch.float16 for v in net.state_dict().values())


def test_bad_precision_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--precision fp16 is for CUDA devices"):
        check_precision(CPU, "fp16")
    with pytest.raises(UsageError, match="--precision must be one of"):
        SearchConfig(device="cpu", precision="half").check()
    SearchConfig(device="cpu", precision="bf16").check()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "ref7676", "--precision", "half"], "invalid choice: 'half'"),
        (["train", "ref7676", "--precision", "fp16", "--device", "cpu"], "fp16 is for CUDA"),
        (["search", "--precision", "fp16", "--device", "cpu"], "fp16 is for CUDA"),
        (["confirm", "x", "--precision", "fp16", "--device", "cpu"], "fp16 is for CUDA"),
        (["worker", "x", "--precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_precision_option_errors_are_one_line_exit_2(
    argv: list[str], message: str, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []  # nothing written


def test_each_worker_sharing_a_gpu_caps_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device=None: calls.append((fraction, device)),
    )
    share_gpu(CUDA, 4)
    assert calls == [((1 - GPU_HEADROOM) / 4, CUDA)]
    share_gpu(CUDA, 1)  # a worker alone has the card
    share_gpu(CPU, 4)
    assert len(calls) == 1


def test_a_confirmation_recorded_before_precision_still_loads() -> None:
    old = {
        "trial": 0,
        "params": 7676,
        "val_accuracy": 99.3,
        "epochs": 15,
        "seeds": [0],
        "test_accuracy": [99.4],
        "seconds": 100.0,
        "weights": "abc",
        "weights_seed": 0,
        "target": 99.4,
    }
    assert Confirmation(**old).precision is None
    study = optuna.create_study()
    study.set_user_attr("confirmations", {"0": old})
    assert confirmations(study)[0].precision is None


@needs_data
def test_confirm_records_the_precision_it_trained_in(tmp_path) -> None:
    spec = normalise(ZOO["ref7676"])
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("settings", {"target": 1.0, "train_subset": 256})
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=98.0,
            user_attrs={
                "spec": spec,
                "params": analyse(spec).params,
                "recipe": dataclasses.asdict(Recipe(epochs=1, batch_size=64)),
            },
        )
    )
    [record] = confirm_study(
        study,
        tmp_path / "artifacts",
        top_k=1,
        seeds=1,
        data_dir=DATA,
        device="cpu",
        progress=False,
        out=io.StringIO(),
        precision="fp32",
    )
    assert record.precision == "fp32"
    assert confirmations(study)[0].precision == "fp32"  # stored in the study too
