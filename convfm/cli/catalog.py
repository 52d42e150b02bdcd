"""`convfm catalog push jobs.csv --url URL`: add or replace a running service's jobs without retraining;
`convfm catalog bundle LIVE_STORE`: write the bundles a live store's whole blocks (of catalog deltas, of event and
impression log segments) lack.

The file is checked as training reads a jobs table (errors name the file, row and column), then posted to
``POST /jobs`` in chunks; each chunk becomes one live catalog version. A chunk the service refuses names the
file's row and column; the chunks before it are kept (pushing the file again replaces them with the same jobs).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from convfm.data.readers import cell_error, first_true
from convfm.data.schema import JOBS
from convfm.errors import ConvFMError, DataValidationError
from convfm.features.extra_fields import slug
from convfm.features.text import column_strings, split_lists
from convfm.store.event_log import FUTURE_SLACK
from convfm.store.live_catalog import CONTENT_FIELDS

DEFAULT_KEY_ENV = "CONVFM_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = sub.add_parser("push", help="post a jobs file (.csv/.parquet) to a running service's POST /jobs",
                          description="post a jobs file (.csv/.parquet) to a running service's POST /jobs")
    push.add_argument("jobs", help="jobs table: job_id and any of the jobs columns (title, skills, location, ...)")
    push.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default http://127.0.0.1:8000)")
    push.add_argument("--api-key-env", metavar="VAR", default=DEFAULT_KEY_ENV,
                      help=f"environment variable holding the service's API key (default {DEFAULT_KEY_ENV})")
    push.add_argument("--chunk", type=int, default=100, help="jobs per request, 1..1000 (default 100)")
    bundle = sub.add_parser("bundle", help="write the bundles a live store's whole blocks of 1,000 catalog deltas or "
                            "event log segments lack (a store written before bundles existed), so a starting replica "
                            "reads one file per block",
                            description="write the bundles a live store's whole blocks of 1,000 catalog deltas, "
                            "event log segments or impression log segments lack")
    bundle.add_argument("live_store", help="the live store (models/NAME/live, or a storage URI)")


def postings(jobs: pd.DataFrame, extra_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a checked jobs table as ``POST /jobs`` postings (missing values left out); the file's columns
    among ``extra_columns`` (the serving model's, case and punctuation aside) go as ``extra`` values, as text."""
    out = []
    wanted = {slug(c) for c in extra_columns}
    extra = {c: column_strings(jobs, c) for c in jobs.columns if c not in JOBS.names and slug(c) in wanted}
    for i, record in enumerate(jobs.to_dict("records")):
        job: dict[str, Any] = {"job_id": str(record["job_id"])}
        values = {name: column[i] for name, column in extra.items() if column[i]}
        if values:
            job["extra"] = values
        for field in (*CONTENT_FIELDS, "posted_at", "expires_at"):
            value = record.get(field)
            if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
                continue
            if field == "skills":
                value = split_lists([value], lower=False)[0]
            elif isinstance(value, pd.Timestamp):
                value = value.isoformat()
            job[field] = value
        out.append(job)
    return out


def check_not_ahead(jobs: pd.DataFrame, path: Path) -> None:
    """The service refuses a posting more than a day ahead (``POST /jobs``): said here, naming the row, before
    any row is sent."""
    if "posted_at" not in jobs.columns:
        return
    latest = pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_SLACK
    ahead = (jobs["posted_at"] > latest).to_numpy()  # NaT compares False
    if ahead.any():
        i = first_true(ahead)
        raise cell_error(path, "posted_at", i, f"posted_at {jobs['posted_at'].iloc[i]} is more than a day ahead: "
                         "post a scheduled job when it opens (the service refuses it)")


def model_job_columns(url: str, key: str, path: Path, jobs: pd.DataFrame) -> list[str]:
    """The serving model's extra job columns (``GET /model``); the file's other columns are named once, as not
    sent. [] when the service cannot say (its model then reads none of them)."""
    import requests

    try:
        response = requests.get(f"{url.rstrip('/')}/model", headers={"X-API-Key": key}, timeout=60)
        columns = list(response.json().get("extra_columns", {}).get("jobs", {})) if response.status_code == 200 else []
    except (requests.RequestException, ValueError, AttributeError):
        columns = []
    wanted = {slug(c) for c in columns}
    unread = [c for c in jobs.columns if c not in JOBS.names and slug(c) not in wanted]
    if unread:
        print(f"{path}: not sent, the serving model reads no such column: {unread}", flush=True)
    return columns


def refusal(path: Path, response: Any, first_row: int) -> str:
    """The service's 422 as 'file: row R, column C: message' (R 1-based in the file)."""
    try:
        detail = response.json()
    except ValueError:
        return f"{path}: the service answered {response.status_code}: {response.text[:200]}"
    if response.status_code != 422:
        hint = " (lower --chunk)" if response.status_code == 413 else ""
        return f"{path}: the service answered {response.status_code}{hint}: {detail.get('detail', detail)}"
    lines = []
    for error in detail.get("detail", [])[:5]:
        loc = error.get("loc", [])
        if len(loc) >= 3 and loc[1] == "upsert" and str(loc[2]).isdigit():
            where = f"row {first_row + int(loc[2]) + 1}"
            if len(loc) > 3:
                where += f", column {loc[3]!r}"
            lines.append(f"{path}: {where}: {error.get('msg')}")
    return "\n".join(lines) or f"{path}: refused: {detail.get('message')}"


def run(args: argparse.Namespace) -> int:
    if args.action == "bundle":
        return bundle(args.live_store)
    import requests

    from convfm.data.loading import read_jobs_file

    if not 1 <= args.chunk <= 1000:
        raise ConvFMError(f"--chunk: must be an integer in [1, 1000], got {args.chunk}")
    key: Optional[str] = os.environ.get(args.api_key_env)
    if not key:
        raise ConvFMError(f"--api-key-env: environment variable {args.api_key_env} is not set (POST /jobs needs "
                          "the service's API key)")
    jobs, path = read_jobs_file(args.jobs)
    if "job_id" not in jobs.columns:
        raise DataValidationError(f"{path}: missing required column 'job_id'")
    check_not_ahead(jobs, path)
    items = postings(jobs, model_job_columns(args.url, key, path, jobs))
    url = f"{args.url.rstrip('/')}/jobs"
    for start in range(0, len(items), args.chunk):
        chunk = items[start : start + args.chunk]
        try:
            response = requests.post(url, json={"upsert": chunk}, headers={"X-API-Key": key}, timeout=120)
        except requests.RequestException as exc:
            pushed = f"rows 1-{start} were pushed" if start else "no row was pushed"
            raise ConvFMError(f"cannot reach {args.url}: {type(exc).__name__}; {pushed}") from None
        if response.status_code != 200:
            kept = f"\nrows 1-{start} were pushed before it" if start else ""
            raise ConvFMError(refusal(path, response, start) + kept)
        body = response.json()
        print(f"rows {start + 1}-{start + len(chunk)} of {len(items)}: catalog version {body['catalog_version']}",
              flush=True)
    print(f"pushed {len(items)} jobs from {path} to {args.url}")
    return 0


def bundle(live_store: str) -> int:
    from convfm.store import event_log
    from convfm.store.log_bundles import FAILED, LARGE, WRITTEN
    from convfm.store.live_catalog import CatalogStore
    from convfm.store.storage import local_or_uri

    root = local_or_uri(live_store)
    store = CatalogStore(root)
    events = event_log.events_location(root)
    logs = [events, event_log.impressions_location(events)]
    if store.latest() == 0 and not any(event_log.list_segments(where) for where in logs):
        raise ConvFMError(f"{root}: no live catalog delta and no event log segment there (a service writes them "
                          "in its live store: models/NAME/live)")
    failures = 0
    if store.latest():
        written, failed = store.bundle_missing()
        failures += len(failed)
        print(f"{store.root}: {store.latest()} deltas; wrote {len(written)} bundle(s)"
              + (f"; {len(failed)} could not be written (logged)" if failed else ""))
    for where in logs:
        done = event_log.bundle_missing(where)
        failures += done[FAILED]
        if done["segments"]:
            print(f"{where}: {done['segments']} segments; wrote {done[WRITTEN]} bundle(s)"
                  + (f"; {done[LARGE]} block(s) too large, left as segments" if done[LARGE] else "")
                  + (f"; {done[FAILED]} could not be written (logged)" if done[FAILED] else ""))
    return 1 if failures else 0
