"""The training step: plain PyTorch against the engine's fast path, per net and thread count.

An epoch is the unit cost of everything budgetnas does, so this times the step alone
(batched augmentation, forward, backward, SGD), with no evaluation, as seconds per epoch
of the search's 50,000 fit images. Each configuration runs in a fresh process, so that
one cannot warm the allocator or the thread pool for the next. The plain and fast paths
of a net alternate for a few rounds (plain, fast, plain, fast...) and each path's median
is reported: on a shared VM one timing moves by 20-35% with what the neighbours do, and
a burst that lands on one path of a single pair would swing its ratio as much.

``--candidates`` also times candidates sampled from the space with the activation cap
lifted, on the fast path and one thread, to check what the search's cost caps stand on:
how well MACs and activations per image rank the seconds an epoch takes.

The FLOP bound is what the step would take if every multiply-accumulate of the forward
and backward passes ran at the speed of a large float32 matmul on the same threads:
three MACs per forward MAC (forward, gradient of the input, gradient of the weights), 2
FLOPs each. Everything else the step does (BatchNorm, ReLU, pooling, dropout,
augmentation, the optimizer) only adds to it.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from search.bench.fidelity import sample_candidates
from search.bench.speed import first_images, machine
from search.engine.augment import random_affine
from search.engine.batchnorm import wide_batch_norm
from search.engine.data import Split, search_data
from search.engine.train import Recipe, torch_threads, train
from search.errors import UsageError
from search.own_model.target import load_target
from search.results.tables import spearman
from search.study.sampler import MIN_MAX_ACTIVATIONS
from space import analyse, build

EPOCH_IMAGES = 50_000  # the search's fit split: what one epoch of a trial trains on
SHIPPED = Path(__file__).resolve().parents[2] / "models"  # the repository's exports
DEFAULT_NETS = (
    "ref7676",
    str(SHIPPED / "mnist_4000p_15e.py"),
    str(SHIPPED / "mnist_8000p_15e.py"),
)
DEFAULT_THREADS = (1, 2)
DEFAULT_STEPS = 100
DEFAULT_ROUNDS = 3
WARMUP_STEPS = 10
MATMUL_SIDE = 1024  # the float32 matmul whose speed stands for the machine's peak
CANDIDATE_BUDGETS = [4000, 8000]
CANDIDATE_STEPS = 30  # per sampled candidate: enough to rank them, and 40 take minutes
NO_CAP = 10**9
# (channels, side) of BatchNorm layers in the nets above: 4, 8 and 16 channels of ref7676,
# the shipped 8k net's 14 at 28 x 28 and the shipped 4k net's 22 at 11 x 11; and 8 and
# 24 channels at 11 x 11, sizes the search samples.
BATCHNORM_SHAPES = ((4, 26), (8, 24), (16, 22), (14, 28), (22, 11), (8, 11), (24, 11))
BATCHNORM_EPS = 1e-5  # nn.BatchNorm2d's default


@dataclass
class StepTiming:
    """One net at one thread count: seconds per epoch of each path, and the bound."""

    net: str
    params: int
    train_flop: int  # per image: 6 x the forward MACs
    threads: int
    plain_epoch_s: float
    fast_epoch_s: float
    bound_epoch_s: float
    plain_faults: int  # page faults per step: memory the kernel had to hand back and zero
    fast_faults: int
    plain_rounds: list[float]  # each round's seconds per epoch; the medians are above
    fast_rounds: list[float]

    @property
    def speedup(self) -> float:
        return self.plain_epoch_s / self.fast_epoch_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def matmul_flops(threads: int, side: int = MATMUL_SIDE, repeats: int = 10) -> float:
    """FLOP/s of a float32 ``side``^3 matmul on ``threads`` threads, the best of ``repeats``."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    best = float("inf")
    with torch_threads(threads):
        a @ b  # warm-up: thread pool and caches
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def augmentation_seconds(threads: int, *, textbook_grid: bool, repeats: int = 200) -> float:
    """Seconds to warp one batch of the default recipe, the best of ``repeats``: the
    engine's sampling grid, or ``F.affine_grid``'s as the plain step builds it."""
    recipe = Recipe()
    images = torch.rand(recipe.batch_size, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    best = float("inf")
    with torch_threads(threads):
        for _ in range(repeats):
            start = time.perf_counter()
            random_affine(
                images,
                generator,
                recipe.rotate,
                recipe.translate,
                recipe.scale,
                textbook_grid=textbook_grid,
            )
            best = min(best, time.perf_counter() - start)
    return best


def batchnorm_seconds(
    channels: int, side: int, threads: int, *, wide: bool, repeats: int = 20
) -> float:
    """Seconds of one training-mode BatchNorm, forward and backward, over a channels_last
    batch of 128 activations of ``channels`` x ``side`` x ``side``, the best of ``repeats``:
    through the engine's wide view, or PyTorch's native kernel. Which one pays depends on
    the channel count (``search.engine.batchnorm.NATIVE_MIN_CHANNELS``)."""
    g = torch.Generator().manual_seed(0)
    shape = (Recipe().batch_size, channels, side, side)
    x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    best = float("inf")
    with torch_threads(threads):
        for _ in range(repeats + 1):  # the first warms the allocator and the kernels
            start = time.perf_counter()
            if wide:
                out, _, _ = wide_batch_norm(x, weight, bias, BATCHNORM_EPS)
            else:
                out = F.batch_norm(x, None, None, weight, bias, training=True, eps=BATCHNORM_EPS)
            out.backward(grad)
            best = min(best, time.perf_counter() - start)
    return best


def epoch_seconds(
    net: str | dict,
    data_dir: str | Path | None,
    *,
    plain: bool,
    threads: int,
    steps: int = DEFAULT_STEPS,
    warmup: int = WARMUP_STEPS,
) -> tuple[float, int]:
    """Seconds per epoch of one path of ``search.engine.train``, from ``steps`` timed steps
    after ``warmup`` more. ``net`` is a TARGET (a reference net, an export) or a spec.
    Also the minor page faults per timed step. It runs in the calling process:
    ``step_benchmark`` gives each call a fresh one."""
    torch.set_num_threads(threads)
    fit, _ = search_data(data_dir, "cpu")
    recipe = Recipe(epochs=1)
    probe = Split(fit.images[:1], fit.labels[:1])  # evaluation is not what is timed
    torch.manual_seed(0)
    model = build(net) if isinstance(net, dict) else load_target(net).build()
    train(model, first_images(fit, warmup * recipe.batch_size), probe, recipe, plain=plain)
    timed = first_images(fit, steps * recipe.batch_size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    train(model, timed, probe, recipe, plain=plain)
    seconds = (time.perf_counter() - start) / steps * EPOCH_IMAGES / recipe.batch_size
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // steps


def step_benchmark(
    nets: list[str] | tuple[str, ...] = DEFAULT_NETS,
    *,
    data_dir: str | Path | None = None,
    threads: list[int] | tuple[int, ...] = DEFAULT_THREADS,
    steps: int = DEFAULT_STEPS,
    rounds: int = DEFAULT_ROUNDS,
    candidates: int = 0,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time plain against fast for every net and thread count, a printed row for each:
    the median of ``rounds`` alternating timings of each path.

    Returns the machine, the matmul peaks and the rows, for ``--out``; the last printed
    line is the smallest speedup at one thread (or at the fewest threads timed).
    Bad input raises UsageError before anything is timed.
    """
    say = say or (lambda line: print(line, flush=True))
    specs = {net: _spec(net) for net in nets}
    if steps <= 0 or rounds <= 0 or not threads or min(threads) <= 0:
        raise UsageError("--steps, --rounds and --threads need positive integers")
    search_data(data_dir, "cpu")  # missing MNIST fails here, not in a worker process
    info = machine(torch.device("cpu"))
    say(
        f"machine: {info['cpu']} ({info['cpu_capability']}), {info['cores']} cores,"
        f" torch {info['torch']}, load average {info['load_average']:.2f}"
    )
    say(
        f"method: {steps} timed steps of 128 images after {WARMUP_STEPS} warm-up steps, each"
        f" timing in a fresh process, plain and fast alternating for {rounds} round"
        f"{'s' if rounds > 1 else ''}, the median of each; seconds per epoch of"
        f" {EPOCH_IMAGES:,} images, training step only (augmentation, forward, backward,"
        " SGD), no evaluation"
    )
    peaks = {n: matmul_flops(n) for n in threads}
    say(
        "FLOP bound: 6 FLOPs per forward MAC at the speed of a float32"
        f" {MATMUL_SIDE}x{MATMUL_SIDE} matmul: "
        + ", ".join(f"{peaks[n] / 1e9:.0f} GFLOP/s on {_threads(n)}" for n in threads)
    )
    fewest = min(threads)
    warps = {grid: augmentation_seconds(fewest, textbook_grid=grid) for grid in (True, False)}
    batches = EPOCH_IMAGES // Recipe().batch_size
    say(
        f"augmentation of a batch on {_threads(fewest)}: F.affine_grid (plain)"
        f" {warps[True] * 1e3:.2f} ms, the engine's sampling grid (fast)"
        f" {warps[False] * 1e3:.2f} ms: {(warps[True] - warps[False]) * batches:.1f} s"
        " less per epoch"
    )
    norms = {
        shape: [batchnorm_seconds(*shape, fewest, wide=wide) for wide in (True, False)]
        for shape in BATCHNORM_SHAPES
    }
    say(
        f"BatchNorm of 128 activations, forward + backward on {_threads(fewest)}, the wide view"
        " against the native channels_last kernel: "
        + ", ".join(
            f"{c} x {s}x{s} {wide * 1e3:.2f} / {native * 1e3:.2f} ms"
            for (c, s), (wide, native) in norms.items()
        )
    )
    say(
        f"{'net':<18} {'params':>7} {'MFLOP/img':>9} {'threads':>7} {'plain s/epoch':>13}"
        f" {'fast s/epoch':>12} {'speedup':>7} {'bound s':>7} {'fast/bound':>10}"
        f" {'faults/step plain, fast':>23}"
    )
    rows = []
    # One process per configuration: maxtasksperchild=1 starts a new one for each.
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for net, spec in specs.items():
            counts = analyse(spec)
            flop = 6 * counts.macs
            for n in threads:
                kwargs = {"threads": n, "steps": steps}
                timings: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
                for _ in range(rounds):
                    for plain in (True, False):
                        timings[plain].append(
                            pool.apply(epoch_seconds, (net, data_dir), {"plain": plain, **kwargs})
                        )
                (plain, plain_faults), (fast, fast_faults) = (
                    _median(timings[True]),
                    _median(timings[False]),
                )
                bound = flop * EPOCH_IMAGES / peaks[n]
                row = StepTiming(
                    _name(net),
                    counts.params,
                    flop,
                    n,
                    plain,
                    fast,
                    bound,
                    plain_faults,
                    fast_faults,
                    [seconds for seconds, _ in timings[True]],
                    [seconds for seconds, _ in timings[False]],
                )
                rows.append(row)
                say(
                    f"{row.net:<18} {row.params:>7,} {flop / 1e6:>9.1f} {n:>7} {plain:>13.1f}"
                    f" {fast:>12.1f} {row.speedup:>6.2f}x {row.bound_epoch_s:>7.1f}"
                    f" {fast / row.bound_epoch_s:>9.1f}x {plain_faults:>13,} {fast_faults:>9,}"
                )
    worst = min((r for r in rows if r.threads == fewest), key=lambda r: r.speedup)
    costs = candidate_costs(candidates, data_dir=data_dir, say=say) if candidates else None
    say(f"smallest speedup on {_threads(fewest)}: {worst.speedup:.2f}x ({worst.net})")
    return {
        "machine": info,
        "steps": steps,
        "rounds": rounds,
        "warmup_steps": WARMUP_STEPS,
        "epoch_images": EPOCH_IMAGES,
        "matmul_flops": {str(n): peaks[n] for n in threads},
        "augmentation_seconds": {"plain": warps[True], "fast": warps[False]},
        "batchnorm_seconds": [
            {"channels": c, "side": s, "wide": wide, "native": native}
            for (c, s), (wide, native) in norms.items()
        ],
        "rows": [r.as_dict() for r in rows],
        "candidates": costs,
    }


def candidate_costs(
    count: int,
    *,
    data_dir: str | Path | None = None,
    steps: int = CANDIDATE_STEPS,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Seconds per epoch of ``count`` candidates sampled with the activation cap lifted
    (4k and 8k budgets alternately, fast path, one thread), and Spearman's rho of those
    seconds with the candidates' MACs and with their activations per image."""
    pool = sample_candidates(count, CANDIDATE_BUDGETS, seed, max_activations=NO_CAP)
    say("")
    say(
        f"candidates: {count} sampled with the activation cap lifted (budgets"
        f" {' and '.join(f'{b:,}' for b in CANDIDATE_BUDGETS)} alternately), fast path,"
        f" 1 thread, {steps} steps each"
    )
    say(f"{'#':>3} {'budget':>6} {'params':>7} {'M MACs':>6} {'activations':>11} {'s/epoch':>7}")
    with multiprocessing.get_context("spawn").Pool(1) as pool_process:
        for candidate in pool:
            candidate["epoch_s"], _ = pool_process.apply(
                epoch_seconds,
                (candidate["spec"], data_dir),
                {"plain": False, "threads": 1, "steps": steps, "warmup": 3},
            )
            say(
                f"{candidate['candidate']:>3} {candidate['budget']:>6,} {candidate['params']:>7,}"
                f" {candidate['macs'] / 1e6:>6.2f} {candidate['activations']:>11,}"
                f" {candidate['epoch_s']:>7.1f}"
            )
    seconds = [c["epoch_s"] for c in pool]
    rho_macs = spearman([c["macs"] for c in pool], seconds)
    rho_activations = spearman([c["activations"] for c in pool], seconds)
    say(
        f"Spearman's rho of s/epoch: with MACs {rho_macs:.2f}, with activations {rho_activations:.2f}"
    )
    for label, group in (
        ("over", [c for c in pool if c["activations"] > MIN_MAX_ACTIVATIONS]),
        ("within", [c for c in pool if c["activations"] <= MIN_MAX_ACTIVATIONS]),
    ):
        if group:
            times = [c["epoch_s"] for c in group]
            say(
                f"{label} the {MIN_MAX_ACTIVATIONS:,} activation cap: {len(group)} candidates,"
                f" median {statistics.median(times):.1f} s/epoch (range {min(times):.1f}-{max(times):.1f})"
            )
    return {
        "steps": steps,
        "seed": seed,
        "rho_macs": rho_macs,
        "rho_activations": rho_activations,
        "candidates": [
            {k: c[k] for k in ("candidate", "budget", "params", "macs", "activations", "epoch_s")}
            for c in pool
        ],
    }


def _median(timings: list[tuple[float, int]]) -> tuple[float, int]:
    # The median round's seconds and its page faults (the lower middle one of an even count).
    return sorted(timings)[(len(timings) - 1) // 2]


def _spec(net: str) -> dict:
    target = load_target(net)
    if not target.is_spec:
        raise UsageError(f"{net}: --step times specs: a reference net or a budgetnas export")
    return target.spec


def _name(net: str) -> str:
    return Path(net).stem if net.endswith(".py") or net.endswith(".json") else net


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"
