"""Where the tests find real MNIST: $BUDGETNAS_DATA, the project's own data-dir setting
(``.ci/run`` sets it). Tests that need the files are marked ``needs_data`` and skip
without them."""

import os
from pathlib import Path

import pytest

DATA = os.environ.get("BUDGETNAS_DATA")
needs_data = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
    reason="real MNIST not found: set BUDGETNAS_DATA to a folder holding MNIST/raw/",
)
