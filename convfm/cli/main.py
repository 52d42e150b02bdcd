"""The ``convfm`` command: one entry point for data, training, evaluation, tuning, serving and the demo.

The library stays Ray-free: subcommands that need Ray import their package (train/tune/serve) only when run.
Errors print one line (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable, Sequence

from convfm.errors import ConvFMError

# subcommand -> (module with add_arguments(parser) and run(args), help line)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("convfm.cli.data", "data utilities: 'data synth' writes a synthetic job market, 'data stats' describes one"),
    "train": ("convfm.cli.train", "train ConvFM with Ray Train on local CPU workers, GPUs or a cluster"),
    "tune": ("convfm.cli.tune", "hyperparameter search with Ray Tune (ASHA); publishes the best model"),
    "evaluate": ("convfm.cli.evaluate", "evaluate a saved model on a data split, beside a popularity baseline"),
    "predict": ("convfm.cli.predict", "a table model's click probability for each row of a file"),
    "serve": ("convfm.cli.serve", "run the recommendation service (Ray Serve) until Ctrl-C"),
    "catalog": ("convfm.cli.catalog", "'catalog push jobs.csv --url URL': add or replace a running service's jobs"),
    "recommend": ("convfm.cli.recommend", "ask a running service for a user's top-k jobs"),
    "recommend-batch": ("convfm.cli.recommend_batch", "every user's top-k jobs, offline, on Ray Data, as Parquet"),
    "models": ("convfm.cli.models", "the registry: publish a model as a version, promote / roll back the served one, list"),
    "report": ("convfm.cli.report", "click, save and apply rates per model version from the service's event log"),
    "demo": ("convfm.cli.demo", "end-to-end demo: synthesize, train, tune, serve, query"),
}


# commands that start a local Ray unless they join a cluster (--address, $RAY_ADDRESS); `serve` always starts one
LOCAL_RAY_COMMANDS = frozenset({"serve", "train", "tune", "recommend-batch", "demo"})


def starts_local_ray(args: argparse.Namespace) -> bool:
    if args.command not in LOCAL_RAY_COMMANDS:
        return False
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS") or "local"  # as init_ray reads it
    return args.command == "serve" or address == "local"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convfm",
        description="Train, tune and serve a Convolutional Factorization Machine for job recommendation.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_line) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_line, description=help_line)
        mod = importlib.import_module(module)
        mod.add_arguments(command)
        command.set_defaults(run=mod.run)
    return parser


def user_error(exc: BaseException) -> ConvFMError | None:
    """The ConvFMError that ``exc`` is or wraps, else None. Ray re-raises a task's exception as a RayTaskError
    (its ``cause``: the original), and Ray Data wraps a UDF's in a UserCodeException (its ``__cause__``): bad data
    found on a worker gets the same one line as bad data found in the driver."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if isinstance(inner, BaseException):
            current = inner
        elif isinstance(current, ConvFMError):
            return current
        else:
            current = current.__cause__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line's exit code. Run as a program (``argv`` None), a command that starts a local Ray runs in a
    session of its own (``convfm.cli.own_session``), so that a SIGTERM to the caller's process group stops it as
    cleanly as one to its pid; called with ``argv`` (tests, scripts), everything runs in this process."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if argv is None and starts_local_ray(args):
        from convfm.cli.own_session import run_in_own_session

        return run_in_own_session(lambda: run_command(args))
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """``args.run(args)``'s exit code: a ConvFMError (or one a Ray task raised) as one line and 2, Ctrl-C as 130."""
    run: Callable[[argparse.Namespace], int | None] = args.run
    try:
        return int(run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - only a ConvFMError (or one a Ray task raised) is answered here
        error = user_error(exc)
        if error is None or args.debug:
            raise
        # Ray Data appends retry advice to a task's error message, after a newline: the error's own line is first
        text = str(error) if error is exc else str(error).split("\n", 1)[0]
        print(f"convfm {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convfm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
