"""Helpers for the cluster tests: parsing `convfm ...` command lines found in manifests and docs."""
from __future__ import annotations

import argparse
import shlex
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def parse_convfm() -> Callable[[str], argparse.Namespace]:
    """``parse_convfm("convfm train --workers 2 ...")`` -> the CLI's Namespace. Stricter than the CLI: every
    ``--flag`` must be spelled out (argparse would also accept a unique prefix such as ``--worker``)."""
    from convfm.cli.main import build_parser

    parser = build_parser()

    def parse(command: str) -> argparse.Namespace:
        words = shlex.split(command)
        assert words[0] == "convfm", command
        args = parser.parse_args(words[1:])
        known = set(_option_strings(parser, words[1:]))
        flags = {w.split("=", 1)[0] for w in words if w.startswith("-")}
        assert flags <= known, f"{command}: not the full spelling of a flag: {sorted(flags - known)}"
        return args

    return parse


def _option_strings(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """Options of ``parser`` and of the (nested) subcommands that ``words`` select."""
    options = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = next((w for w in words if w in action.choices), None)
            if chosen is not None:
                options += _option_strings(action.choices[chosen], words[words.index(chosen) + 1:])
    return options
