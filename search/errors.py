"""The one exception every layer raises for bad input, kept apart so that none of them
has to import another layer to raise it."""


class UsageError(Exception):
    """Bad input from the user: the CLI prints the one-line message and exits with 2."""
