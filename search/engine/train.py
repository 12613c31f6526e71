"""The training engine: one model, one recipe, a few epochs over tensors on the device.

There is no DataLoader: the whole split already sits on the device as uint8, so
each step is an index, a batched augmentation and a forward/backward pass. Data
order and augmentation come from a private generator seeded by `seed`, so a run
is reproducible from (model init, recipe, seed) alone. The caller owns model
init: call `torch.manual_seed(seed)` before building the model.

The step is plain PyTorch made fast where the profile of the nets searched here
pointed (docs/speed.md), without changing what they compute:

- channels_last activations and weights, on the CPU as on CUDA: the small convolutions'
  backward pass and the max-pools run faster in it;
- ``nn.Dropout`` masks drawn as geometric gaps on the CPU (``search.engine.dropout``):
  the same masks in distribution for a few random numbers per dropped value;
- BatchNorm's sums over a wide view of channels_last memory on the CPU
  (``search.engine.batchnorm``), where the native kernel walks a few channels at a time;
- one fused optimizer update for all parameters on the CPU, not five small operations
  per tensor;
- on Linux, freed memory kept for the next step instead of handed back to the
  kernel, so a step does not page-fault its activations back in.

``plain=True`` runs the textbook step instead (NCHW, ``nn.Dropout`` and ``nn.BatchNorm2d``
as they are, ``F.affine_grid``, PyTorch's default optimizer loop), the reference that
``budgetnas bench --step`` and the tests compare against.
"""

import contextlib
import ctypes
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm  # widgets in a notebook (with ipywidgets), text in a terminal

from search.engine.augment import random_affine
from search.engine.batchnorm import WideBatchNorm2d
from search.engine.data import Split
from search.engine.dropout import SparseDropout

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "step")
CUDA_CHECK_EVERY = 25  # steps between loss checks on CUDA, where each check is a host sync
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what training autocasts to (evaluation: fp32)
# Which step trained a trial, as recorded with it: a study's measured pace is a fair cost
# estimate only for trials of the same step (the fast one is 1.3-2.2x quicker per epoch).
STEP = "fast"
# glibc's mallopt: blocks up to 32 MiB (its maximum) come from the heap, not from mmap, and up
# to 1 GiB of freed heap stays with the process, so one step's activations reuse the last's.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 * 2**20, 2**30
# The fast step's layers on the CPU: subclasses that compute what their parents compute.
FAST_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Dropout: SparseDropout,
    nn.BatchNorm2d: WideBatchNorm2d,
}


@dataclass
class Recipe:
    """How to train: everything the search may vary, as plain JSON-friendly fields.

    The defaults take ref7676 (7,676 parameters) past 99.4% test accuracy in 15
    epochs on the full 60k training set.
    """

    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov, momentum 0.9) | "adam" | "adamw"
    lr: float = 0.1  # peak learning rate
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" | "step" (x0.1 at 50% and 75% of training)
    label_smoothing: float = 0.0
    rotate: float = 8.0  # degrees
    translate: float = 0.1  # fraction of the image size
    scale: float = 0.08  # fraction; rotate = translate = scale = 0 turns augmentation off

    def __post_init__(self) -> None:
        # Fail when the recipe is made (e.g. rebuilt from a stored trial), not epochs later.
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} (got {self.optimizer!r})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0 (got {self.lr}, {self.weight_decay})"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if min(self.rotate, self.translate, self.scale) < 0:
            raise ValueError("rotate, translate and scale must be >= 0")


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's steps
    accuracy: float  # percent correct on the evaluation split after this epoch
    seconds: float  # wall time of the epoch, its evaluation included


@dataclass
class TrainResult:
    epochs: list[EpochStats]
    accuracy: float  # final epoch's, in percent: what the model being returned scores
    seconds: float
    device: str
    state_dict: dict[str, torch.Tensor]  # CPU copies, safe to keep after the model moves on
    precision: str = "fp32"  # what training autocast to: "fp32", "bf16" or "fp16"


class NonFiniteLoss(RuntimeError):
    """The loss went NaN or infinite; more steps cannot recover, so training stops."""


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cpu" or "cuda[:N]" as asked, if it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N] (got {name!r})")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested but CUDA is not available here; use cpu or auto"
        )
    return device


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype training on ``device`` autocasts to under ``precision``; None: plain fp32.

    "auto" picks from the device: bf16 on CUDA cards that compute it natively (compute
    capability 8.0 on: A100, RTX 30xx, L4, H100...; and torch.cuda.is_bf16_supported()),
    fp16 with a GradScaler on the older cards with tensor cores (7.x: V100, T4, RTX 20xx),
    where bf16 is only emulated, and fp32 on older cards and on CPU (bf16 autocast is ~3x
    slower than fp32 on AVX2 CPUs). "fp32", "bf16" and "fp16" force the choice; a ValueError
    says when the device cannot run it (fp16 on CPU, bf16 on a card without bf16).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if precision == "fp32":
        return None
    if precision == "fp16":
        if not cuda:
            raise ValueError("precision fp16 is for CUDA devices; on CPU use fp32 (or bf16)")
        return torch.float16
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError(
                "precision bf16 needs a CUDA device that supports it; use fp16, fp32 or auto"
            )
        return torch.bfloat16
    if not cuda:
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if major >= 7 else None


def precision_name(dtype: torch.dtype | None) -> str:
    """ "fp32", "bf16" or "fp16": how trials and confirmations record ``autocast_dtype``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def train(
    model: nn.Module,
    fit: Split,
    evaluation: Split,
    recipe: Recipe,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool = False,
    precision: str = "auto",
    plain: bool = False,
) -> TrainResult:
    """Train `model` in place on `fit`, scoring it on `evaluation` after every epoch.

    `device` defaults to where `fit` lives. `on_epoch` sees each epoch's stats and
    may raise (e.g. optuna.TrialPruned) to stop training; the exception propagates.
    Raises NonFiniteLoss as soon as the loss is NaN/inf (within CUDA_CHECK_EVERY
    steps on CUDA, where checking every step would stall the GPU). ``precision`` picks
    the autocast dtype of training (``autocast_dtype``); evaluation is always fp32.
    ``plain`` runs the textbook step (see the module docstring): same maths, slower.
    The model is left in channels_last unless ``plain``; the returned weights are
    ordinary contiguous tensors either way.
    """
    device = fit.images.device if device is None else torch.device(device)
    cuda = device.type == "cuda"
    images, labels = fit.images.to(device), fit.labels.to(device)
    layout = torch.contiguous_format if plain else _layout_for(model, device, images[:2])
    model.to(device, memory_format=layout)
    if not plain and device.type == "cpu":
        _keep_freed_memory()

    generator = torch.Generator().manual_seed(seed)
    # Drop the last partial batch: a reshuffle each epoch means no image is left out
    # for good, and a tiny final batch would give BatchNorm noisy statistics.
    batch = min(recipe.batch_size, len(images))
    steps = len(images) // batch
    optimizer = _optimizer(model, recipe, fused=not plain and not cuda)
    scheduler = _scheduler(optimizer, recipe, steps * recipe.epochs)
    check_every = CUDA_CHECK_EVERY if cuda else 1
    dtype = autocast_dtype(device, precision)
    # fp16's narrow range needs loss scaling; with bf16 or fp32 the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    history: list[EpochStats] = []
    start = time.perf_counter()
    # CUDA's own dropout and BatchNorm kernels are fast already, and counting dropout's
    # draws would stall the GPU.
    with fast_layers(model) if not plain and not cuda else contextlib.nullcontext():
        for epoch in range(1, recipe.epochs + 1):
            began = time.perf_counter()
            model.train()
            order = torch.randperm(len(images), generator=generator).to(device, non_blocking=True)
            losses = torch.zeros(steps, device=device)  # kept on the device: no sync per step
            checked = 0
            rate = 0.0
            with _bar(epoch, recipe.epochs, steps, progress) as bar:
                for step in range(steps):
                    index = order[step * batch : (step + 1) * batch]
                    x = random_affine(
                        _floats(images[index]),
                        generator,
                        recipe.rotate,
                        recipe.translate,
                        recipe.scale,
                        textbook_grid=plain,
                    )
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        logits = model(x.contiguous(memory_format=layout))
                        loss = F.cross_entropy(
                            logits, labels[index], label_smoothing=recipe.label_smoothing
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    losses[step] = loss.detach()
                    if (step + 1) % check_every == 0 or step + 1 == steps:
                        _check_finite(losses[checked : step + 1], epoch, checked, recipe)
                        checked = step + 1
                    if progress:
                        rate = (step + 1) * batch / (time.perf_counter() - began)
                        bar.set_postfix_str(f"{rate:.0f} img/s", refresh=False)
                        bar.update()
                train_loss = losses.mean().item()
                accuracy = evaluate(model, evaluation)
                bar.set_postfix_str(f"{rate:.0f} img/s, loss {train_loss:.4f}, acc {accuracy:.2f}%")
            stats = EpochStats(epoch, train_loss, accuracy, time.perf_counter() - began)
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)

    state_dict = {
        name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for name, t in model.state_dict().items()
    }
    return TrainResult(
        history,
        history[-1].accuracy,
        time.perf_counter() - start,
        str(device),
        state_dict,
        precision_name(dtype),
    )


@contextlib.contextmanager
def fast_layers(model: nn.Module) -> Iterator[int]:
    """Give every ``nn.Dropout`` and ``nn.BatchNorm2d`` of ``model`` its ``FAST_LAYERS``
    subclass while the block runs; yields how many were changed.

    Only the class changes, so the parameters, buffers and the optimizer's references stay
    as they are, and each module gets its own class back afterwards: a model handed to the
    engine (a user's own, say) leaves as it came. Subclasses of the two may mean something
    else and are left alone.
    """
    changed = [(module, type(module)) for module in model.modules() if type(module) in FAST_LAYERS]
    try:
        for module, kind in changed:
            module.__class__ = FAST_LAYERS[kind]
        yield len(changed)
    finally:
        for module, kind in changed:
            module.__class__ = kind


def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Percent of `split` that `model` classifies correctly (run on the model's device)."""
    device = next(model.parameters()).device
    # The layout training left the weights in, but always float32: the recorded accuracy
    # must be what the exported model gives in a user's plain float32 code.
    layout = _layout_of(model)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), _exact_float32():
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for i in range(0, len(split), batch_size):
            x = _floats(split.images[i : i + batch_size].to(device, non_blocking=True))
            y = split.labels[i : i + batch_size].to(device, non_blocking=True)
            correct += (model(x.contiguous(memory_format=layout)).argmax(dim=1) == y).sum()
    model.train(was_training)
    return 100.0 * correct.item() / len(split)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` while the block runs (None: as set),
    and put back after: a timing in the calling process must not change its threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and matmuls while the block runs.

    PyTorch lets cuDNN run float32 convolutions in TF32 on Ampere and later cards (10 bits
    of mantissa), so an evaluation there would not be the float32 arithmetic of the CPU.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _bar(epoch: int, epochs: int, steps: int, progress: bool) -> tqdm:
    # One line per epoch for people: batches done, ETA, then img/s (training only, so the
    # evaluation at the end does not drag it down) and the epoch's results.
    return tqdm(
        total=steps,
        desc=f"epoch {epoch}/{epochs}",
        bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} batches [{elapsed}<{remaining}{postfix}]",
        file=sys.stderr,
        disable=not progress,
    )


def _floats(images: torch.Tensor) -> torch.Tensor:
    # uint8 N x 28 x 28 -> float N x 1 x 28 x 28 in [0, 1]; the model normalises itself.
    return images.unsqueeze(1).float().div_(255)


def _layout_for(
    model: nn.Module, device: torch.device, images: torch.Tensor
) -> torch.memory_format:
    """channels_last if ``model`` runs in it. A model of a user's that flattens with
    ``x.view(len(x), -1)`` does not (a view needs contiguous memory): it trains in the
    layout it came in, as plain PyTorch would."""
    model.to(device, memory_format=torch.channels_last)
    was_training = model.training
    model.eval()  # no BatchNorm statistics, no dropout: the probe leaves no trace
    try:
        with torch.no_grad():
            model(_floats(images).contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except RuntimeError:
        return torch.contiguous_format
    finally:
        model.train(was_training)


def _layout_of(model: nn.Module) -> torch.memory_format:
    # A conv weight with more than one value per pixel tells the layouts apart; a model
    # without one runs the same either way.
    for weight in model.parameters():
        if weight.dim() == 4 and not weight.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


@functools.cache
def _keep_freed_memory() -> None:
    # Each step allocates and frees megabytes of activations. glibc serves blocks over a
    # moving threshold with mmap and returns them on free, so the next step page-faults
    # them in again (the kernel zeroes every page): 200-9,000 faults a step for the nets
    # of `budgetnas bench --step`, and 20-50 with them kept on the heap. Elsewhere (macOS,
    # musl) do nothing.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _optimizer(model: nn.Module, recipe: Recipe, *, fused: bool = False) -> torch.optim.Optimizer:
    # ``fused`` updates every parameter in one kernel: the same update, but PyTorch's
    # default loop spends ~0.4 ms a step on the CPU dispatching five small operations
    # for each of a net's ~20 tensors. ``None``, not ``False``, when not fused: an explicit
    # False would also turn off the multi-tensor default PyTorch picks on CUDA.
    params, lr, wd = model.parameters(), recipe.lr, recipe.weight_decay
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd, fused=fused or None
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused or None)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused or None)


def _scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    # Both are stepped once per batch, so they stretch to fit any number of epochs.
    if recipe.schedule == "onecycle":
        # cycle_momentum=False keeps SGD's momentum (Adam's beta1) fixed as the recipe says.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=total_steps, cycle_momentum=False
        )
    milestones = [total_steps // 2, total_steps * 3 // 4]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _check_finite(losses: torch.Tensor, epoch: int, first_step: int, recipe: Recipe) -> None:
    bad = torch.isfinite(losses).logical_not().nonzero()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteLoss(
            f"loss became {losses[i].item()} at epoch {epoch}, step {first_step + i + 1};"
            f" lr {recipe.lr} with {recipe.optimizer} is probably too high"
        )
