"""`convfm recommend`: ask a running service for a user's top-k jobs and print them as a table."""
from __future__ import annotations

import argparse
import os
import shutil
import unicodedata
from typing import Any

from convfm.errors import ConvFMError


def _k(text: str) -> int:
    """-k checked here (the service would refuse it too, but without one a bad -k read "cannot reach")."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..100, got {text!r}") from None
    if not 1 <= k <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..100, got {k}")
    return k


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="ID", help="user id (unknown ids get popular jobs unless a profile is given)")
    parser.add_argument("-k", type=_k, default=10, help="number of jobs, 1..100 (default 10)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default http://127.0.0.1:8000)")
    parser.add_argument("--skills", help="cold-start profile: comma-separated skills")
    parser.add_argument("--location", help="cold-start profile: location")
    parser.add_argument("--experience", help="cold-start profile: experience level")
    parser.add_argument("--extra", action="append", default=[], metavar="COLUMN=VALUE",
                        help="cold-start profile: a value of one of the model's extra user columns (data."
                        "extra_columns; GET /model lists them), e.g. --extra \"Headline=python developer\" "
                        "(repeatable; a list column takes ';'-separated values)")
    parser.add_argument("--filter-location", help="only jobs in this location")
    parser.add_argument("--job-type", help="only jobs of this type (full_time, contract, ...)")
    parser.add_argument("--salary-min", type=float, help="only jobs whose salary range reaches this")
    parser.add_argument("--include-seen", action="store_true", help="keep jobs the user already interacted with")
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"k": args.k, "exclude_seen": not args.include_seen, "explain": True}  # the why column
    if args.user:
        body["user_id"] = args.user
    profile = {"skills": [s.strip() for s in (args.skills or "").split(",") if s.strip()],
               "location": args.location, "experience_level": args.experience, "extra": _extra(args.extra)}
    if any(profile.values()):
        body["profile"] = {key: value for key, value in profile.items() if value}
    filters = {"location": args.filter_location, "job_type": args.job_type, "salary_min": args.salary_min}
    body["filters"] = {key: value for key, value in filters.items() if value is not None}
    if "user_id" not in body and "profile" not in body:
        raise ConvFMError("give --user or a profile (--skills/--location/--experience/--extra)")
    return body


def _extra(options: list[str]) -> dict[str, str]:
    """``--extra COLUMN=VALUE`` options -> ``profile.extra``; ConvFMError naming a malformed one."""
    malformed = [o for o in options if "=" not in o or not o.split("=", 1)[0].strip()]
    if malformed:
        raise ConvFMError(f"--extra takes COLUMN=VALUE, got {malformed}")
    return {key.strip(): value.strip() for key, value in (o.split("=", 1) for o in options)}


def _columns(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _columns(text))


def format_table(result: dict[str, Any], width: int = 0) -> str:
    """Rank, job id, title, company, location, score, why; the why column is cut to the terminal width. Columns
    are aligned by display width (a Japanese company name takes two columns a character)."""
    width = width or shutil.get_terminal_size((140, 20)).columns
    rows = [(str(n), i["job_id"], i.get("title") or "", i.get("company") or "", i.get("location") or "",
             f"{i['score']:.3f}", i.get("why") or "") for n, i in enumerate(result["items"], 1)]
    header = ("#", "job", "title", "company", "location", "score", "why")
    fixed = len(header) - 1
    widths = [max(_columns(r[c]) for r in rows + [header]) for c in range(fixed)]
    room = max(20, width - sum(widths) - 2 * fixed)
    lines = ["  ".join(_pad(h, w) for h, w in zip(header, widths + [0])).rstrip()]
    for row in rows:
        why = row[fixed] if len(row[fixed]) <= room else row[fixed][: room - 3] + "..."
        lines.append("  ".join(_pad(c, w) for c, w in zip(row[:fixed], widths)) + "  " + why)
    notes = [f"model {result['model_version']}"]
    if result.get("fallback"):
        notes.append(f"fallback: {result['fallback']} (user unknown, no profile)")
    if result.get("cold_start"):
        notes.append("cold start: scored from the profile")
    return "\n".join(lines + ["", "; ".join(notes)])


def run(args: argparse.Namespace) -> int:
    import requests

    body = request_body(args)
    headers = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConvFMError(f"--api-key-env: environment variable {args.api_key_env} is not set")
        headers["X-API-Key"] = key
    try:
        response = requests.post(f"{args.url.rstrip('/')}/recommend", json=body, headers=headers, timeout=60)
    except requests.RequestException as exc:
        raise ConvFMError(f"cannot reach {args.url}: {type(exc).__name__} (is `convfm serve` running?)") from None
    if response.status_code != 200:
        try:
            detail = response.json()
            detail = detail.get("message") or detail.get("detail")
        except ValueError:
            detail = response.text[:300]
        raise ConvFMError(f"{args.url} answered {response.status_code}: {detail}")
    result = response.json()
    if not result["items"]:
        print("no jobs match")
        return 0
    print(format_table(result))
    return 0
