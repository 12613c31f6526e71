"""``python -m search.cli``: the ``budgetnas`` command."""

from search.cli import entry

entry()
