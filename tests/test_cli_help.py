"""Every command explains itself: each option has a help line that shows its default, and
each command's help ends with examples."""

import argparse

import pytest

from search.cli import HelpFormatter, build_parser, main

COMMANDS = [
    action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
][0].choices


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_with_its_default(name):
    command = COMMANDS[name]
    formatter = HelpFormatter(name)
    for action in command._actions:
        if action.dest == "help" or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        if action.option_strings:
            text = formatter._get_help_string(action)
            assert "default" in text, f"{name} {action.option_strings}: {text!r}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_ends_with_examples(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"budgetnas {name}" in text.split("examples:")[1]
