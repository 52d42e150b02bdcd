"""docs/DAILY_LOOP.md cannot drift: every `convfm` command in its code blocks parses with the real CLI parser
(and a serve command's flags make a valid ServeConfig), and every `curl` body is a valid request body."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from convfm.cli.main import build_parser
from convfm.cli.serve import serve_config
from serve.schemas import ReloadRequest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "DAILY_LOOP.md"


def commands(tool: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(tool + " ")]


def test_the_page_has_the_whole_loop():
    used = {tuple(words[1:3]) if words[1] in ("models", "data") else (words[1],) for words in commands("convfm")}
    assert {("train",), ("serve",), ("report",), ("models", "publish"), ("models", "promote"),
            ("models", "rollback")} <= used
    assert any("--events" in w and "--init-from" in w for w in commands("convfm"))
    assert any("--traffic" in w for w in commands("convfm")) and commands("curl")


@pytest.mark.parametrize("words", commands("convfm"), ids=lambda words: " ".join(words[1:3]))
def test_every_documented_command_parses(words):
    args = build_parser().parse_args(words[1:])  # argparse exits (SystemExit) on an unknown flag or value
    if args.command == "serve":
        serve_config(args)  # the --traffic value is a valid split (ConfigError otherwise)


@pytest.mark.parametrize("words", commands("curl"), ids=lambda words: words[-1][:40])
def test_every_documented_request_body_is_valid(words):
    body = words[words.index("-d") + 1]
    path = next(w for w in words if w.startswith("http"))
    assert path.endswith("/admin/reload")
    ReloadRequest.model_validate_json(body)
