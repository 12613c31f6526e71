"""Open Optuna storages and artifact stores, checking the URL before anything is written.

SQLite (the default, ``sqlite:///studies.db``) suits one machine; PostgreSQL or MySQL
URLs serve many workers and machines. Every RDB storage gets a heartbeat so that a
worker killed mid-trial leaves a trial that is failed and retried, not a zombie.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import warnings
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from search.errors import UsageError

DEFAULT_STORAGE = "sqlite:///studies.db"
DEFAULT_ARTIFACTS = "artifacts"
SQLITE_BUSY_TIMEOUT_S = 60
# Times a trial is run again after its worker died (or was interrupted) mid-trial; a
# candidate that kills its worker every time is then given up on.
MAX_RETRIES = 2
SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for other URLs."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def check_storage_url(url: str, *, must_exist: bool) -> None:
    """Reject a malformed URL, a file that is not SQLite, or (for commands that only read)
    a database that does not exist yet, before anything could create it."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme or not scheme.replace("+", "").replace("_", "").isalnum():
        raise UsageError(
            f"storage URL {url!r} is not a database URL; use e.g. sqlite:///studies.db "
            "or postgresql://user@host/dbname"
        )
    if scheme == "postgres" or scheme.startswith("postgres+"):
        raise UsageError(
            f"storage URL {url!r}: SQLAlchemy names the scheme postgresql://, not postgres://; "
            "write postgresql://user@host/dbname"
        )
    path = sqlite_path(url)
    if scheme.startswith("sqlite") and path is None:
        raise UsageError(f"storage URL {url!r}: write SQLite URLs as sqlite:///path/to/file.db")
    if path is None or url.removeprefix("sqlite:///") in ("", ":memory:"):
        return
    if path.is_dir():
        raise UsageError(
            f"{path} is a folder, not an SQLite database; point --storage at a .db file"
        )
    if path.exists():
        try:
            with open(path, "rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as error:
            raise UsageError(
                f"cannot read {path}: {error.strerror or error}; check --storage"
            ) from None
        if path.stat().st_size > 0 and header != SQLITE_HEADER:
            raise UsageError(f"{path} is not an SQLite database; point --storage at a .db file")
        if must_exist:
            _check_holds_studies(path)
    elif must_exist:
        raise UsageError(f"no storage at {path}; run 'budgetnas search' first or pass --storage")
    elif not path.parent.is_dir():
        raise UsageError(f"cannot create {path}: folder {path.parent} does not exist")


def _check_holds_studies(path: Path) -> None:
    """Commands that only read must not leave Optuna's tables behind: opening an empty
    file or another program's SQLite database with RDBStorage would create them. So look
    first, read-only, for the table every Optuna storage has."""
    try:
        with contextlib.closing(
            sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S
            )
        ) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
            ).fetchone()
    except sqlite3.Error as error:
        raise UsageError(
            f"{path} is not a readable SQLite database ({error}); point --storage at a .db file"
        ) from None
    if not found:
        raise UsageError(
            f"{path} holds no Optuna studies; point --storage at the database "
            "'budgetnas search' wrote, or run a search first"
        )


def open_storage(
    url: str, *, must_exist: bool = False, heartbeat_interval: int | None = 60
) -> RDBStorage:
    """An RDBStorage for ``url`` with a heartbeat and a retry for stale trials.

    SQLite connections wait up to a minute for a lock instead of failing with "database
    is locked", which is what a dashboard reading during a search, or a few local
    workers, would otherwise hit.
    """
    check_storage_url(url, must_exist=must_exist)
    engine_kwargs = {}
    if sqlite_path(url) is not None:
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna 5.0 but are its mechanism for stale trials.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat = {}
            if heartbeat_interval:
                heartbeat = {
                    "heartbeat_interval": heartbeat_interval,
                    "grace_period": 2 * heartbeat_interval,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES
                    ),
                }
            return RDBStorage(_with_installed_driver(url), engine_kwargs=engine_kwargs, **heartbeat)
    except ImportError as error:
        # Optuna re-raises the driver's ModuleNotFoundError without its name.
        driver = getattr(error.__cause__, "name", None) or error.name or "its driver"
        raise UsageError(
            f"storage URL {url!r} needs a database driver that is not installed ({driver}); "
            "install it, e.g. for PostgreSQL: pip install 'budgetnas[postgres]'"
        ) from None
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"cannot open storage {url!r}: {reason}; check the URL and that the database "
            "server is running"
        ) from None


def _with_installed_driver(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver when it names none and SQLAlchemy's
    default (psycopg 3 since SQLAlchemy 2.1) is missing but psycopg2, which
    ``budgetnas[postgres]`` installs, is there."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://")


def load_study(storage: RDBStorage, name: str) -> optuna.Study:
    """An existing study, or a UsageError that lists the ones there are."""
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(
            f"no study named {name!r} in this storage (studies: {known}); "
            "check the name, or --storage ('budgetnas studies' lists them)"
        )
    return optuna.load_study(study_name=name, storage=storage)


def artifact_store(path: str | Path) -> FileSystemArtifactStore:
    """The artifact store that holds trained weights. Workers on several machines need it
    on a shared filesystem (or an S3/GCS store from optuna.artifacts)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
