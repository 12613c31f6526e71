"""What every command shares: the parser classes, the examples that end each command's
help, the argument helpers, the plain-text table, the writable checks and the exit codes.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna

from search.engine.train import PRECISIONS
from search.errors import UsageError
from search.study.storage import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, load_study, open_storage

INTERRUPTED = 130
TERMINATED = 143


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help line ends with its default; examples keep their line breaks.

    Options whose default is None say in their own words what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "search": [
        "budgetnas search --budget 8000 --epochs 15 --target 99.4 --timeout 3600",
        "budgetnas search --budget 8000 --epochs 2 --trials 6 --train-subset 10000  # 2 minutes",
    ],
    "worker": ["budgetnas worker mnist-8000p-15e --storage postgresql://user@host/budgetnas"],
    "confirm": ["budgetnas confirm mnist-8000p-15e --top-k 1 --seeds 3"],
    "studies": ["budgetnas studies --storage sqlite:///results/search.db"],
    "choices": [
        "budgetnas choices --budget 8000 --storage sqlite:///results/search_8000.db "
        "sqlite:///results/search_8000_60min.db"
    ],
    "show": ["budgetnas show mnist-8000p-15e --top 20"],
    "front": [
        "budgetnas front --storage sqlite:///results/search_4000.db "
        "sqlite:///results/search_8000_60min.db --target 99.4",
        "budgetnas front --epochs 15 --references models/ref7676.py --html front.html",
        "budgetnas front --storage sqlite:///a.db --storage sqlite:///b.db --markdown  # README",
    ],
    "export": [
        "budgetnas export mnist-8000p-15e                # the selected winner",
        "budgetnas export mnist-8000p-15e --trial 12 --out my_net.py",
    ],
    "report": ["budgetnas report mnist-8000p-15e --out reports/8k.html"],
    "dashboard": ["budgetnas dashboard --storage sqlite:///studies.db --port 8080"],
    "train": [
        "budgetnas train ref7676 --epochs 15 --save models/ref7676.py",
        "budgetnas train my_model.py:Net --epochs 15 --seeds 3  # your own nn.Module",
    ],
    "check": [
        "budgetnas check ref14874 --budget 20000 --require bn,dropout,gap --forbid fc",
        "budgetnas check my_model.py:Net --budget 8000 --require bn,gap  # exit 1 if one fails",
    ],
    "bench": [
        "budgetnas bench",
        "budgetnas bench --device cuda --out bench.json",
        "budgetnas bench --step --out results/bench_step.json",
    ],
    "bench-fidelity": ["budgetnas bench-fidelity --candidates 24 --out results/fidelity.jsonl"],
    "bench-search": ["budgetnas bench-search --minutes 45 --budget 8000 --out results/"],
}


def _finish_help(commands: argparse._SubParsersAction) -> None:
    """Give every command the defaults-showing help and its examples."""
    for name, command in commands.choices.items():
        command.formatter_class = HelpFormatter
        lines = EXAMPLES.get(name, [])
        if lines:
            command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _integers(text: str, option: str) -> list[int]:
    """A comma-separated list of integers from ``option``, or a one-line UsageError."""
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise UsageError(f"{option} takes integers separated by commas, got {text!r}") from None


def _percentage(text: str) -> float:
    """An accuracy target; checked here so that 'abc' gets the same hint as 101."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a percentage in (0, 100], got {text!r}"
        ) from None
    if not 0 < value <= 100:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return value


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default: %(default)s)"
    )
    parser.add_argument(
        "--artifacts",
        default=DEFAULT_ARTIFACTS,
        help="artifact folder holding trained weights (default: %(default)s)",
    )


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="folder with MNIST/raw/ (default: $BUDGETNAS_DATA or ./data)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


def _add_precision(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default,
        help="training's autocast dtype. auto: bf16 on CUDA cards from compute capability 8.0 "
        "(A100, RTX 30xx, L4, H100...), fp16 with loss scaling on older ones (V100, T4), "
        "fp32 on CPU; evaluation is always fp32 (default: "
        + ("%(default)s)" if default else "the one the search was started with)"),
    )


def _quiet_optuna() -> None:
    """budgetnas prints its own line per trial; Optuna's INFO log would repeat it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _table(rows: list[dict], columns: dict[str, str]) -> str:
    """A plain text table; ``columns`` maps row keys to headers."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else ""
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(row.get(key)) for key in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(columns.values())]

    def line(values: Iterable[str]) -> str:
        # Figures right-aligned; the last column left-aligned, as it may be free text.
        *figures, last = [v.rjust(w) for v, w in zip(values, widths, strict=True)]
        return "  ".join([*figures, last.strip()]).rstrip()

    return "\n".join([line(columns.values()), *map(line, cells)])


def _existing_study(args: argparse.Namespace) -> optuna.Study:
    """The study named on the command line, from a storage that must already exist."""
    return load_study(
        open_storage(args.storage, must_exist=True, heartbeat_interval=None), args.study
    )


def _check_folder_writable(path: Path, option: str) -> None:
    """A file can be created beside ``path`` (probed with an unnamed temporary file that
    leaves nothing behind), so a failure is a one-line error rather than an OSError."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; pass a file name")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UsageError(
            f"cannot write {path}: {error.strerror or error}; pass another {option}"
        ) from None
