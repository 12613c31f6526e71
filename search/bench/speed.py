"""How fast the engine trains, against the pipeline a hand-made MNIST project would run.

The engine (``search.engine.train``) keeps the whole split on the device and augments a batch
with one batched warp. The usual alternative is a ``DataLoader`` over a Dataset that
warps each image with PIL and converts it with ToTensor. Both are timed here on the
same machine, in the same run, with the same model, optimizer, schedule and batch. The
engine's side is ``search.engine.train`` as it is, its fast step included (channels_last,
cheap dropout masks), while the conventional side runs the textbook step, as a hand-made
project does; so the ratio is what a user gains, data path and step together, and
``budgetnas bench --step`` (``search.bench.step``) measures the step's share alone.

The comparison is kept fair to the conventional pipeline on purpose: it gets the better
of ``num_workers=0`` and one worker per core, persistent workers, torchvision's default
(cheapest) interpolation, no per-step host sync, on CUDA the engine's bf16 and
channels_last. Where a choice had to be made it favours the conventional side. The
headline speedup is the engine's search throughput (one trial or single-thread trials
side by side, whichever is faster) against one conventional training, as hand-made
projects run it; the same side-by-side trick applied to the conventional pipeline is
printed too, as the stricter ratio.

Times are extrapolated from a fixed number of steps after a warm-up: a full 15-epoch
training per configuration would take hours on a CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from search.bench.conventional import AffineMNIST
from search.engine.data import Split, confirm_data, resolve_data_dir
from search.engine.train import (
    Recipe,
    _optimizer,
    _scheduler,
    autocast_dtype,
    resolve_device,
    torch_threads,
    train,
)
from search.errors import UsageError
from search.study.run import threads_per_worker
from space import ZOO, build, param_count

RECIPE = Recipe(epochs=1)  # the default recipe; one "epoch" spans the timed steps
BATCH = RECIPE.batch_size
EPOCHS = Recipe().epochs  # a full training, as the search runs it by default
EPOCH_IMAGES = 60_000  # the whole MNIST training set
WARMUP_STEPS = 20
DEFAULT_STEPS = {"cpu": 150, "cuda": 500}  # a GPU step is ~100x shorter: time more of them
DEFAULT_MODELS = ("ref7676", "ref18594")
WORKER_TIMEOUT_S = 900  # a parallel worker that has not reported by then is given up on


@dataclass
class Rate:
    """One measured configuration: training images per second and what it extrapolates to."""

    label: str
    images_per_s: float

    @property
    def epoch_s(self) -> float:
        return EPOCH_IMAGES / self.images_per_s

    @property
    def training_s(self) -> float:
        return EPOCHS * self.epoch_s

    @property
    def trials_per_hour(self) -> float:
        return 3600 / self.training_s

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "epoch_s": self.epoch_s,
            "training_s": self.training_s,
            "trials_per_hour": self.trials_per_hour,
        }


# ---------------------------------------------------------------- timing one configuration


def engine_rate(
    name: str,
    images: Split,
    device: torch.device,
    steps: int,
    warmup: int,
    before_timing: Callable[[], object] | None = None,
) -> float:
    """Images per second of ``search.engine.train.train`` itself on ``steps`` batches.

    The real engine is timed, not a copy of its loop: one one-epoch run of ``warmup``
    steps, then one of ``steps``. Its per-run extras (optimizer set-up, scoring one
    image, copying ~8k weights) are noise next to 150 steps.
    """
    images = Split(images.images.to(device), images.labels.to(device))
    model = _model(name)
    probe = Split(images.images[:1], images.labels[:1])  # evaluation is not what is timed
    train(model, first_images(images, warmup * BATCH), probe, RECIPE, device=device)
    fit = first_images(images, steps * BATCH)
    if before_timing is not None:
        before_timing()
    start = _clock(device)
    train(model, fit, probe, RECIPE, device=device)
    seconds = _clock(device) - start
    return steps * BATCH / seconds


def conventional_rate(
    name: str,
    images: Split,
    device: torch.device,
    steps: int,
    warmup: int,
    num_workers: int,
    before_timing: Callable[[], object] | None = None,
) -> float:
    """Images per second of a DataLoader + PIL pipeline driving the same model and step.

    Persistent workers and a shared iterator across epochs spare it the worker start-up
    a plain loop pays every epoch; the timed steps start after the warm-up, when its
    prefetch queue is already running.
    """
    cuda = device.type == "cuda"
    model = _model(name).to(
        device, memory_format=torch.channels_last if cuda else torch.preserve_format
    )
    # The engine's own optimizer and schedule (SGD Nesterov, OneCycle stepped per batch).
    optimizer = _optimizer(model, RECIPE)
    scheduler = _scheduler(optimizer, RECIPE, warmup + steps)
    dataset = AffineMNIST(images.images.cpu().numpy(), images.labels.cpu().numpy())
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=num_workers > 0,
    )
    batches = _endless(loader)
    # The engine's precision on this device (bf16, or fp16 with loss scaling on older cards).
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    model.train()
    for _ in range(warmup):
        step(*next(batches))
    if before_timing is not None:
        before_timing()
    start = _clock(device)
    for _ in range(steps):
        step(*next(batches))
    seconds = _clock(device) - start
    del batches, loader  # shut its worker processes down now, not at some later GC
    return steps * BATCH / seconds


def parallel_rate(
    pipeline: str,
    name: str,
    data_dir: Path,
    device: torch.device,
    steps: int,
    warmup: int,
    workers: int,
) -> float:
    """Images per second summed over ``workers`` single-thread trial processes at once.

    This is how a search uses a machine: several trials side by side, each its own
    process with one CPU thread (on CUDA, all sharing the GPU). A barrier starts their
    timed steps together and the total is all their images over the span from that start
    to the last one's end, so a worker that finishes early and leaves the others the
    machine cannot inflate it.
    """
    context = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    barrier = context.Barrier(workers)
    results = context.Queue()
    args = (pipeline, name, str(data_dir), str(device), steps, warmup, barrier, results)
    processes = [context.Process(target=_trial_process, args=args) for _ in range(workers)]
    for process in processes:
        process.start()
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        while len(spans) + len(errors) < workers:
            try:
                ok, value = results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline or not any(p.is_alive() for p in processes):
                    barrier.abort()
                    errors.append("a worker died or hung without reporting")
                    break
                continue
            (spans if ok else errors).append(value)
            if not ok:
                barrier.abort()  # the others would wait for it forever
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
    if errors:
        raise RuntimeError(f"{pipeline} worker failed: {errors[0]}")
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    return workers * steps * BATCH / span


def _trial_process(
    pipeline: str,
    name: str,
    data_dir: str,
    device: str,
    steps: int,
    warmup: int,
    barrier: Any,
    results: Any,
) -> None:
    """One parallel worker: reports ``(True, (start, end))`` of its timed steps, or
    ``(False, why)``. time.monotonic is one clock for every process on the machine."""
    try:
        torch.set_num_threads(1)
        images = load_images(Path(data_dir))
        where = torch.device(device)
        started: list[float] = []

        def start() -> None:
            barrier.wait()
            started.append(time.monotonic())

        if pipeline == "engine":
            engine_rate(name, images, where, steps, warmup, start)
        else:
            conventional_rate(name, images, where, steps, warmup, 0, start)
        results.put((True, (started[0], time.monotonic())))
    except BaseException as error:  # noqa: BLE001 - the parent must hear of any failure
        barrier.abort()
        results.put((False, f"{type(error).__name__}: {error}"))


# ---------------------------------------------------------------- the benchmark


def benchmark(
    *,
    steps: int | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
    workers: int | None = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print it line by line to ``out`` (stdout) and return the numbers.

    The last printed line is ``speedup: <ratio>x``: the engine's search throughput (the
    better of one trial on all threads and ``workers`` single-thread trials summed)
    over one conventional training's (the better of its DataLoader configurations), for
    the first model. Bad input raises UsageError before any data is read.
    """
    where, steps, models, workers = _check(steps, device, models, workers)
    warmup = min(WARMUP_STEPS, steps)
    data_dir = resolve_data_dir(data_dir)
    images = load_images(data_dir)

    def say(line: str = "") -> None:
        print(line, file=out or sys.stdout, flush=True)  # sys.stdout as it is now

    info = machine(where)
    for line in _header(info, where, steps, warmup):
        say(line)
    result: dict[str, Any] = {
        "machine": info,
        "steps": steps,
        "warmup_steps": warmup,
        "batch_size": BATCH,
        "epoch_images": EPOCH_IMAGES,
        "epochs": EPOCHS,
        "models": {},
    }

    one_trial: dict[str, tuple[Rate, Rate]] = {}  # model -> (engine, best conventional)
    for name in models:
        say()
        say(f"{name} ({param_count(ZOO[name]):,} params)")
        rates = _one_trial_rates(name, images, where, steps, warmup, say)
        best = max(rates[1:], key=_speed)
        ratio = rates[0].images_per_s / best.images_per_s
        say(f"  engine vs best conventional: {ratio:.2f}x")
        one_trial[name] = rates[0], best
        result["models"][name] = {
            "params": param_count(ZOO[name]),
            "engine": rates[0].as_dict(),
            "conventional": [r.as_dict() for r in rates[1:]],
            "ratio": ratio,
        }

    name = models[0]
    say()
    say(f"search throughput, {name}: images/s summed over trials running at once")
    trials = f"{workers} trial{'s' if workers > 1 else ''} x 1 thread"
    if where.type == "cuda":
        trials += " sharing the GPU"
    engines, conventionals = [one_trial[name][0]], [one_trial[name][1]]
    for pipeline, rates in (("engine", engines), ("conventional", conventionals)):
        label = f"{pipeline}, {trials}" + (", num_workers=0" if pipeline != "engine" else "")
        total = parallel_rate(pipeline, name, data_dir, where, steps, warmup, workers)
        rates.append(Rate(label, total))
    for rate in engines + conventionals:
        say(_row(rate, per_hour=True))
    fastest, fastest_conventional = max(engines, key=_speed), max(conventionals, key=_speed)
    # The headline compares a search with the engine against what a hand-made project
    # runs: one conventional training. Conventional trials side by side are shown too,
    # as the stricter comparison.
    conventional = one_trial[name][1]
    speedup = fastest.images_per_s / conventional.images_per_s
    strict = fastest.images_per_s / fastest_conventional.images_per_s
    result["search"] = {
        "model": name,
        "workers": workers,
        "engine": [r.as_dict() for r in engines],
        "conventional": [r.as_dict() for r in conventionals],
        "best_engine": fastest.label,
        "conventional_pipeline": conventional.label,
        "speedup_vs_conventional_side_by_side": strict,
    }
    result["speedup"] = speedup
    say(
        f"best: {fastest.label} ({fastest.images_per_s:,.0f} img/s)"
        f" vs {conventional.label} ({conventional.images_per_s:,.0f} img/s)"
    )
    say(
        f"against {fastest_conventional.label} ({fastest_conventional.images_per_s:,.0f} img/s): {strict:.2f}x"
    )
    say(f"speedup: {speedup:.2f}x")
    return result


def _one_trial_rates(
    name: str,
    images: Split,
    device: torch.device,
    steps: int,
    warmup: int,
    say: Callable[[str], None],
) -> list[Rate]:
    """The engine, then the conventional pipeline with each worker count, one trial on
    all threads (what a one-worker search gives its trial); each row printed when done."""
    cores = threads_per_worker(1)
    with torch_threads(cores):
        rates = [
            Rate(
                f"engine, 1 trial x {cores} threads",
                engine_rate(name, images, device, steps, warmup),
            )
        ]
        say(_row(rates[0]))
        for num_workers in sorted({0, cores}):
            rates.append(
                Rate(
                    f"conventional, 1 trial, num_workers={num_workers}",
                    conventional_rate(name, images, device, steps, warmup, num_workers),
                )
            )
            say(_row(rates[-1]))
        return rates


def _header(info: dict[str, Any], device: torch.device, steps: int, warmup: int) -> list[str]:
    gpu = f" ({info['gpu']})" if info["gpu"] else ""
    cuda = ", bf16 + channels_last" if device.type == "cuda" else ""
    return [
        f"machine: {info['cpu']} ({info['cpu_capability']}), {info['cores']} cores, torch {info['torch']},"
        f" device {device}{gpu}, load average {info['load_average']:.2f}",
        f"method: {steps} timed steps of {BATCH} images after {warmup} warm-up steps;"
        f" per-epoch ({EPOCH_IMAGES:,} images) and {EPOCHS}-epoch times are extrapolated"
        f" from those {steps} steps (training only, no evaluation)",
        f"conventional: DataLoader(batch {BATCH}, shuffle) over a Dataset doing one PIL affine"
        f" warp (rotate +-{RECIPE.rotate:g} deg, shift +-{RECIPE.translate:.0%},"
        f" zoom +-{RECIPE.scale:.0%}) + ToTensor per image; both feed the model [0, 1] floats"
        f" and it normalises inside forward; same model, SGD Nesterov, OneCycle{cuda}",
    ]


def load_images(data_dir: Path) -> Split:
    """All 60k MNIST training images and labels, on the CPU (the test set is not used)."""
    return confirm_data(data_dir, "cpu")[0]


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, for the header and the JSON."""
    return {
        "cpu": _cpu_model(),
        # Two machines sold under one model name can differ in vector units (AVX2 vs
        # AVX-512), and these small convolutions run ~2x apart on them.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": threads_per_worker(1),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def _check(
    steps: int | None, device: str, models: list[str] | tuple[str, ...], workers: int | None
) -> tuple[torch.device, int, list[str], int]:
    models = [m.strip() for m in models if m.strip()]
    if not models:
        raise UsageError(f"--models needs at least one of {', '.join(ZOO)}")
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from {', '.join(ZOO)}")
    try:
        where = resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    steps = DEFAULT_STEPS[where.type] if steps is None else steps
    if steps <= 0:
        raise UsageError(f"--steps must be a positive integer (got {steps})")
    workers = threads_per_worker(1) if workers is None else workers
    if workers <= 0:
        raise UsageError(f"--workers must be a positive integer (got {workers})")
    return where, steps, models, workers


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # same initial weights for every configuration
    return build(ZOO[name])


def first_images(images: Split, count: int) -> Split:
    """The first ``count`` images, wrapping around when asked for more than there are."""
    index = torch.arange(count, device=images.images.device) % len(images)
    return Split(images.images[index], images.labels[index])


def _endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def _clock(device: torch.device) -> float:
    """Seconds on a monotonic clock, once the device has finished the work queued so far
    (CUDA runs asynchronously: without the sync the clock would time the launches)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _speed(rate: Rate) -> float:
    return rate.images_per_s


def _row(rate: Rate, per_hour: bool = False) -> str:
    line = (
        f"  {rate.label:<50} {rate.images_per_s:>9,.0f} img/s  {rate.epoch_s:>7.1f} s/epoch"
        f"  {rate.training_s / 60:>7.1f} min/{EPOCHS} epochs"
    )
    return line + (f"  {rate.trials_per_hour:>7.1f} trials/hour" if per_hour else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
