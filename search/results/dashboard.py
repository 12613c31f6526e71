"""optuna-dashboard on a budgetnas storage, with the artifact store wired in so that each
trial's page offers its weights for download."""

from __future__ import annotations

from pathlib import Path

import optuna_dashboard

from search.errors import UsageError
from search.study.storage import artifact_store, open_storage


def dashboard_url(host: str, port: int) -> str:
    """Where a browser finds the dashboard (IPv6 hosts need brackets in a URL)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard"


def serve(
    storage_url: str, artifacts: str | Path, host: str = "127.0.0.1", port: int = 8080
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C returns normally).

    The storage must already exist: a dashboard only reads, and a mistyped SQLite path
    should be an error, not a new empty database. No heartbeat: it runs no trials.
    """
    storage = open_storage(storage_url, must_exist=True, heartbeat_interval=None)
    store = artifact_store(artifacts)
    print(f"optuna-dashboard: {dashboard_url(host, port)} (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as error:  # binding failed: port taken, host unknown, no permission
        raise UsageError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
