"""`convfm report --events LOG`: click, save and apply rates per model version from the service's event log."""
from __future__ import annotations

import argparse
import json

from convfm.evaluation.feedback import feedback_report, format_feedback
from convfm.store.storage import local_or_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", required=True, metavar="LOG", help="the event log: a live store's events/ "
                        "folder (the service writes models/NAME/live/events), local or a URI")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    report = feedback_report(local_or_uri(args.events))
    print(json.dumps(report, indent=2) if args.json else format_feedback(report))
    return 0
