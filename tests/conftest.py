"""Test-session set-up shared by every test module."""

import os
from pathlib import Path


def pytest_configure(config) -> None:
    """Make $BUDGETNAS_DATA absolute before any test reads it.

    The README's ``BUDGETNAS_DATA=../shared/data pytest -q`` gives a path relative to
    where pytest runs, but several tests start ``budgetnas`` in a temporary folder, where
    the same relative path would point nowhere.
    """
    data = os.environ.get("BUDGETNAS_DATA")
    if data:
        os.environ["BUDGETNAS_DATA"] = str(Path(data).resolve())
