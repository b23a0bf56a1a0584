"""`cbir --help` and every subcommand's help: each flag and argument says what it does."""
from __future__ import annotations

import argparse

from cbir_kit.cli.app import build_parser


def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """``"cbir sub --flag"`` for every argument without help text, in ``parser`` and its subcommands."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += undocumented(sub, f"{path} {name}")
        elif not action.help and action.dest != "help":
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_flag_and_argument_has_help_text():
    assert not undocumented(build_parser(), "cbir")
