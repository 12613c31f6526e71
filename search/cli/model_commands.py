"""``budgetnas train`` and ``check``: a reference net, a spec, an export or your own
``nn.Module``, trained or checked."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from search.cli.common import _add_data, _add_precision, _check_folder_writable, _positive_int
from search.engine.data import confirm_data
from search.engine.memory import check_memory
from search.engine.train import Recipe, train
from search.errors import UsageError
from search.own_model.check import RULES, check, inspect_target, render
from search.own_model.target import load_target, own_model_files, save_own_model
from search.results.export import write_export
from search.study.config import check_device, check_precision
from space import ZOO

_TARGET_HELP = (
    f"a reference net ({', '.join(ZOO)}), a spec .json, a budgetnas export .py, or "
    "FILE.py:ClassName for your own nn.Module (no constructor arguments, N x 1 x 28 x 28 "
    "in, N x 10 out)"
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``train`` and ``check`` commands."""
    train = commands.add_parser(
        "train", help="train a reference net, a spec, an export or your own nn.Module"
    )
    train.add_argument("target", help=_TARGET_HELP)
    train.add_argument(
        "--epochs", type=_positive_int, default=15, help="epochs of the training (default: 15)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the init and data order (default: 0)"
    )
    train.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="train N times, with seeds --seed, --seed + 1, ...; prints each run's final-epoch "
        "test accuracy, then their mean and min (default: 1)",
    )
    _add_data(train)
    _add_precision(train)
    train.add_argument(
        "--train-subset",
        type=_positive_int,
        help="train on the first N training images (default: all 60,000)",
    )
    train.add_argument(
        "--save",
        help="export the trained model (the median seed's weights) as a module PATH.py with "
        "load() and METRICS; your own module's source is copied beside it as PATH_model.py "
        "(default: no export)",
    )
    train.add_argument("--force", action="store_true", help="overwrite an existing --save target")
    train.add_argument(
        "--plain-step",
        action="store_true",
        help="train with the textbook PyTorch step instead of the engine's fast one: the same"
        " maths, slower; the reference the fast step is checked against (default: off)",
    )
    train.set_defaults(run=cmd_train)

    check_parser = commands.add_parser(
        "check",
        help="what a network is made of; rules that fail exit 1 (for CI)",
        description="Report a network's trainable parameters, BatchNorm, dropout, global\n"
        "average pooling, fully connected layer, receptive field, MACs per image and\n"
        "output shape. --budget, --require and --forbid make it a check for CI: exit 1\n"
        "if a rule fails, 0 if all pass.",
    )
    check_parser.add_argument("target", help=_TARGET_HELP)
    check_parser.add_argument(
        "--budget",
        type=_positive_int,
        help="fail above this many trainable parameters (default: no limit)",
    )
    rules = ",".join(RULES)
    check_parser.add_argument(
        "--require",
        default="",
        metavar="RULES",
        help=f"comma-separated, from {rules}: fail unless the network has each (default: none)",
    )
    check_parser.add_argument(
        "--forbid",
        default="",
        metavar="RULES",
        help=f"comma-separated, from {rules}: fail if the network has any (default: none)",
    )
    check_parser.set_defaults(run=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:

    inspection, verdicts = check(
        args.target, budget=args.budget, require=args.require, forbid=args.forbid
    )
    print(render(inspection, verdicts))
    return 0 if all(v.passed for v in verdicts) else 1


def cmd_train(args: argparse.Namespace) -> int:

    target = load_target(args.target)
    device = check_device(args.device)
    check_precision(device, args.precision)
    if target.spec is not None:  # before anything is built: a net too large to train ends here
        check_memory(target.spec, min(Recipe().batch_size, args.train_subset or 60_000), device)
    inspection = inspect_target(target)
    if args.save:
        _check_writable(Path(args.save), args.force, own=not target.is_spec)
    try:
        fit, test = confirm_data(args.data_dir, device, train_subset=args.train_subset)
    except ValueError as error:  # --train-subset larger than the training set
        raise UsageError(f"--train-subset: {error}; pass a smaller one") from None
    recipe = Recipe(epochs=args.epochs)
    seeds = list(range(args.seed, args.seed + args.seeds))
    rf = "unknown" if inspection.receptive_field is None else inspection.receptive_field
    print(
        f"training {target.name}: {inspection.params:,} params, RF {rf}, "
        f"{inspection.macs:,} MACs, {len(fit):,} training images, {args.epochs} epochs, "
        f"{_seeds_text(seeds)}, {device}",
        flush=True,
    )

    def on_epoch(stats) -> None:
        print(
            f"{stats.epoch:>5}  {stats.train_loss:>10.4f}  {stats.accuracy:>7.2f}  {stats.seconds:>7.1f}",
            flush=True,
        )

    results = []
    for seed in seeds:
        if len(seeds) > 1:
            print(f"seed {seed}", flush=True)
        print(f"{'epoch':>5}  {'train loss':>10}  {'test %':>7}  {'seconds':>7}", flush=True)
        torch.manual_seed(seed)  # the init, as the search and confirm seed it
        result = train(
            target.build(),
            fit,
            test,
            recipe,
            seed=seed,
            device=device,
            on_epoch=on_epoch,
            progress=sys.stderr.isatty(),
            precision=args.precision,
            plain=args.plain_step,
        )
        step = ", plain step" if args.plain_step else ""
        print(
            f"final-epoch test accuracy: {result.accuracy:.2f}% (seed {seed}, {args.epochs} "
            f"epochs, {result.seconds:.0f} s on {result.device}, {result.precision}{step})",
            flush=True,
        )
        results.append(result)
    accuracies = [r.accuracy for r in results]
    mean = sum(accuracies) / len(accuracies)
    if len(seeds) > 1:
        print(
            f"{len(seeds)} seeds: mean {mean:.2f}%, min {min(accuracies):.2f}% "
            "(final-epoch test accuracy of each run)"
        )
    if args.save:
        # Ship the seed closest to the median, as confirm does: representative, not lucky.
        median = sorted(range(len(seeds)), key=lambda i: accuracies[i])[(len(seeds) - 1) // 2]
        metrics = {
            "test_accuracy": accuracies,
            "test_accuracy_mean": round(mean, 4),
            "test_accuracy_min": min(accuracies),
            "seeds": seeds,
            "weights_seed": seeds[median],
            "weights_test_accuracy": accuracies[median],
            "epochs": args.epochs,
            "params": inspection.params,
            "macs": inspection.macs,
            "train_subset": args.train_subset,
        }
        origin = (
            f"Trained by '{_train_command(args)}' with the default recipe; "
            f"weights of seed {seeds[median]}."
        )
        _save_trained(target, args, results[median].state_dict, metrics, origin)
    return 0


def _seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _train_command(args: argparse.Namespace) -> str:
    """The 'budgetnas train' command line that reproduces a training, for its export."""
    argv = ["budgetnas", "train", args.target, "--epochs", str(args.epochs)]
    if args.seed:
        argv += ["--seed", str(args.seed)]
    if args.seeds > 1:
        argv += ["--seeds", str(args.seeds)]
    if args.train_subset:
        argv += ["--train-subset", str(args.train_subset)]
    return shlex.join(argv)


def _save_trained(target, args: argparse.Namespace, state_dict, metrics, origin) -> None:
    if target.is_spec:
        path = write_export(
            target.spec,
            args.save,
            "--save",
            state_dict=state_dict,
            metrics=metrics,
            origin=origin,
            force=args.force,
        )
        print(f"wrote {path} and {path.with_suffix('.pt')}")
        return
    loader, copy, weights = save_own_model(
        target, args.save, state_dict=state_dict, metrics=metrics, origin=origin, force=args.force
    )
    print(f"wrote {loader} (load() and METRICS), {copy} (your source) and {weights}")


def _check_writable(path: Path, force: bool, own: bool = False) -> None:
    """Refuse an export target before hours of training, not after."""
    if path.suffix != ".py" or not path.stem.isidentifier():
        raise UsageError(f"--save must be a PATH.py with an importable module name, got {path}")
    # The export writes the module and its weights; a module of yours also its source.
    for target in own_model_files(path) if own else (path, path.with_suffix(".pt")):
        if target.exists() and not force:
            raise UsageError(f"{target} already exists; pass --force to overwrite it")
    _check_folder_writable(path, "--save")
