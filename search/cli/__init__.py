"""The ``budgetnas`` command, a thin layer over functions the tests call directly: ``common``
holds what every command shares, each ``*_commands`` module the arguments and the
``cmd_*`` functions of its commands, and ``build_parser`` assembles them. Bad input ends
in a one-line error and exit code 2 before anything is written; Ctrl-C ends in exit code
130 with the command that resumes the work. It is the top layer, beside ``search.api``:
it may import every other part of ``search``, and nothing imports it."""

from __future__ import annotations

import shlex
import sys

from search.cli import bench_commands, model_commands, results_commands, search_commands
from search.cli.common import (
    INTERRUPTED,
    TERMINATED,
    HelpFormatter,
    Parser,
    _finish_help,
    _quiet_optuna,
)
from search.engine.data import DataError
from search.errors import UsageError
from search.study.signals import Terminated, handle_stop_signals
from space import SpecError

__all__ = ["HelpFormatter", "Parser", "build_parser", "entry", "main"]


def build_parser() -> Parser:
    parser = Parser(
        prog="budgetnas", description="Search tiny MNIST conv nets under a parameter budget."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in (search_commands, results_commands, model_commands, bench_commands):
        group.add_commands(commands)
    _finish_help(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _quiet_optuna()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (UsageError, DataError, SpecError) as error:
        print(f"budgetnas {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        how = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        if args.command in ("search", "worker"):
            command = shlex.join(["budgetnas", *argv])
            print(
                f"\n{how}: the running trial is marked failed and queued to run first on "
                f"resume; the study is intact. Resume with:\n  {command}",
                file=sys.stderr,
            )
        else:
            print(f"\n{how}: 'budgetnas {args.command}' stopped", file=sys.stderr)
        return TERMINATED if isinstance(error, Terminated) else INTERRUPTED


def entry() -> None:
    """The ``budgetnas`` console script: SIGTERM (kill, timeout, schedulers) stops the
    command as Ctrl-C does, with exit code 143."""
    handle_stop_signals()
    sys.exit(main())
