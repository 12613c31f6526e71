"""Stop signals: SIGTERM handled like Ctrl-C, and neither let loose while Optuna writes.

A search stops on Ctrl-C or SIGTERM at its running trial, which is failed and queued to
run first on resume. The signal must land in the training, not in Optuna's own
bookkeeping around it: ``stop_signals_held`` holds it there, and the objective lets it
through (``stop_signals_let_through``) for as long as it runs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, systemd, Docker, SLURM pre-emption), handled like Ctrl-C."""


def stop_reason(error: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted (Ctrl-C)"


_stopped_by: type[KeyboardInterrupt] | None = None  # what a stop signal raised, once one came
_held = False  # Optuna is sampling, telling or running callbacks: a stop waits for it


def _stop(exception: type[KeyboardInterrupt]) -> None:
    global _stopped_by
    _stopped_by = exception
    if not _held:
        raise exception


def _terminate_once(signum: int, frame: object) -> None:
    """SIGTERM: once, so that a second signal cannot interrupt the cleanup."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop(Terminated)


def _interrupt_once(signum: int, frame: object) -> None:
    """SIGINT in a worker: a Ctrl-C from the terminal plus the one the search process
    passes on must not interrupt the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop(KeyboardInterrupt)


def _interrupt(signum: int, frame: object) -> None:
    _stop(KeyboardInterrupt)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold a stop signal while Optuna does its own work around the objective (sampling,
    telling, callbacks) and raise it when the block ends; the objective lets signals
    through at once while it runs, where the training is.

    Raised inside Optuna's tell, a KeyboardInterrupt leaves its trial loop as an
    UnboundLocalError (a traceback and exit code 1 instead of a clean stop) and can cut a
    storage write short. Held for those moments, the trial ends as Optuna finishes it.
    """
    global _held
    _held = True
    try:
        yield
    finally:
        _held = False
    raise_if_stopped()


@contextlib.contextmanager
def stop_signals_let_through() -> Iterator[None]:
    """Inside ``stop_signals_held``, let a stop signal raise at once for the block (the
    objective, where the training is); the hold is back when the block ends."""
    global _held
    held, _held = _held, False
    try:
        yield
    finally:
        _held = held


def raise_if_stopped() -> None:
    """Raise again what a stop signal raised. An exception a signal handler raises while
    Python runs a callback on its own (a weakref's, during garbage collection) is lost
    there; the objective checks after every epoch and workers between trials, so the
    process still stops."""
    if _stopped_by is not None:
        raise _stopped_by


def handle_stop_signals(*, interrupt_once: bool = False) -> None:
    """SIGTERM stops this process as Ctrl-C does (``Terminated``); both are handled once
    in a worker (``interrupt_once``). An exception that Python reports as unraisable
    because it landed in a callback prints no traceback: raise_if_stopped raises it."""
    signal.signal(signal.SIGTERM, _terminate_once)
    signal.signal(signal.SIGINT, _interrupt_once if interrupt_once else _interrupt)

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            sys.__unraisablehook__(unraisable)

    sys.unraisablehook = hook
