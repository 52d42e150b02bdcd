"""`convfm models publish|promote|rollback|list`: the registry from the command line.

``publish RUN/best models/NAME`` adds a trained model as the entry's next version; ``promote ENTRY vNNNN`` and
``rollback ENTRY`` move its promoted version (``latest``), recorded in its append-only ``promotions.jsonl``;
with ``--url`` a running service is told to serve it to all traffic (``POST /admin/reload``, which also ends an
A/B split)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from convfm.cli.catalog import DEFAULT_KEY_ENV
from convfm.errors import ConvFMError
from convfm.store import storage
from convfm.store.registry import (
    LATEST, latest_note, promote, promoted_stack, promotion_history, publish, require_entry, rollback, versions,
)
from convfm.store.storage import local_or_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    publish_help = "add a model directory (a run's best/) to a registry entry as its next version"
    publish_command = sub.add_parser("publish", help=publish_help, description=publish_help)
    publish_command.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory, e.g. runs/NAME/best")
    publish_command.add_argument("entry", metavar="ENTRY", help="registry entry: models/NAME or a URI")
    for name, help_line in (("promote", "make a version the entry's promoted one (latest) and record it"),
                            ("rollback", "go back to the version promoted before the current one"),
                            ("list", "the entry's versions, the promoted one and its promotion history")):
        command = sub.add_parser(name, help=help_line, description=help_line)
        command.add_argument("entry", metavar="ENTRY", help="registry entry: models/NAME or a URI (s3://.../NAME)")
        if name == "promote":
            command.add_argument("version", metavar="vNNNN", help="the version to promote")
        if name != "list":
            command.add_argument("--url", help="a running service to switch to it for 100%% of traffic")
            command.add_argument("--api-key-env", metavar="VAR", default=DEFAULT_KEY_ENV,
                                 help=f"environment variable holding the service's API key (default {DEFAULT_KEY_ENV})")


def service_key(key_env: str) -> str:
    """The service's API key from ``key_env``; checked before the registry moves, so a missing key changes
    nothing."""
    key = os.environ.get(key_env)
    if not key:
        raise ConvFMError(f"--api-key-env: environment variable {key_env} is not set (POST /admin/reload needs "
                          "the service's API key); the registry was not changed")
    return key


def tell_service(url: str, key: str, version: str) -> dict[str, Any]:
    """``POST /admin/reload {"version": ...}``: every replica serves ``version`` to all users, or the service
    keeps what it serves and this raises ConvFMError with its reason."""
    import requests

    try:
        response = requests.post(f"{url.rstrip('/')}/admin/reload", json={"version": version},
                                 headers={"X-API-Key": key}, timeout=600)
    except requests.RequestException as exc:
        raise ConvFMError(f"--url: cannot reach {url}: {type(exc).__name__}; the registry was updated") from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        reason = body.get("error") or body.get("detail") or body.get("message") or response.text[:200]
        raise ConvFMError(f"--url: {url} answered {response.status_code}: {reason}; the registry was updated")
    return body


def was_latest(record: dict[str, Any]) -> str:
    """What ``latest`` named before a promotion record: "was vNNNN", or what promote found instead of a version."""
    if record.get("previous") is not None:
        return f"was {record['previous']}"
    if "latest_was" not in record:  # a record written before promote recorded what it found
        return "was None"
    return "there was no latest" if record["latest_was"] is None else \
        f"latest named no version: {record['latest_was']!r}"


def run(args: argparse.Namespace) -> int:
    entry = local_or_uri(args.entry)
    if args.action == "publish":  # `latest` moves too, unless the entry was ever promoted (registry docstring)
        where = publish(args.model_dir, storage.parent(entry), storage.name(entry))
        print(f"published {args.model_dir} as {where} ({latest_note(where)})")
        return 0
    if args.action == "list":
        require_entry(entry)
        history = promotion_history(entry)
        stack = promoted_stack(history)
        if stack:
            marked, mark = stack[-1], "promoted"
        else:  # never promoted: latest is the last publish
            pointer = storage.join(entry, LATEST)
            marked, mark = (storage.read_text(pointer).strip() if storage.is_file(pointer) else None), "latest"
        for version in versions(entry):
            print(f"{version}{f'  {mark}' if version == marked else ''}")
        for record in history:
            print(f"{record.get('at')}  {record.get('action')} {record['version']} ({was_latest(record)})")
        return 0
    key = service_key(args.api_key_env) if args.url else None
    record = promote(entry, args.version) if args.action == "promote" else rollback(entry)
    was = "it was latest already" if record["previous"] == record["version"] else was_latest(record)
    print(f"{args.entry}: {record['action']} {record['version']} ({was})")
    if key is not None:
        tell_service(args.url, key, record["version"])
        print(f"{args.url}: serving {record['version']} to all traffic")
    return 0
