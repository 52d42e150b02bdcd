"""Helpers of the reliability tests: run many ``convfm`` command lines in one fresh interpreter.

A fresh process per command line costs seconds of imports (torch, Ray) each; one child process runs them all
through ``convfm.cli.main.main`` (the console script's function: its return value is the exit status), with
stdout/stderr captured per command. In that child ``ray.init`` raises: a command that got past validation
fails loudly instead of starting a cluster and training.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

RUNNER = textwrap.dedent("""
    import contextlib, io, json, logging, os, sys, traceback
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("GUARD: validation passed and Ray was about to start")

    ray.init = refuse
    from convfm.cli.main import main

    cases, results = json.load(open(sys.argv[1])), {}
    for case in cases:
        os.chdir(case["cwd"])
        logging.root.handlers.clear()  # main() calls basicConfig: bind its handler to this case's stderr
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case["argv"])
            except SystemExit as exc:  # argparse
                code = exc.code
            except BaseException:  # noqa: BLE001 - reported to the test, which fails on it
                code = "exception"
                traceback.print_exc()
        results[case["id"]] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    json.dump(results, open(sys.argv[2], "w"))
""")


def run_cli_cases(cases: list[dict[str, Any]], workdir: Path, timeout: float = 240) -> dict[str, dict[str, Any]]:
    """``cases``: dicts with ``id``, ``argv`` (after ``convfm``) and ``cwd``; returns id -> code/stdout/stderr."""
    spec, results = workdir / "cases.json", workdir / "results.json"
    spec.write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(spec), str(results)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text())


def assert_one_line_error(result: dict[str, Any], command: str, fragments: list[str]) -> str:
    """Exit status 2 and exactly one stderr line, ``convfm COMMAND: error: ...`` holding every fragment."""
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"convfm {command}: error: "), lines
    missing = [f for f in fragments if f not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="session")
def cli_runner():
    """``cli_runner(cases, workdir) -> {id: {code, stdout, stderr}}`` (see ``run_cli_cases``)."""
    return run_cli_cases


@pytest.fixture(scope="session")
def one_line_error():
    """``one_line_error(result, command, fragments) -> line`` (see ``assert_one_line_error``)."""
    return assert_one_line_error


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis 4 on pytest 9 gives every operation's item of one fuzz test the same node id; pytest-xdist
    keys items by node id and would run one operation only. Give each item its operation as parameters."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label and item.id.params is None:
            item._id = item.id.with_params(label)
