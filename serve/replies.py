"""What the service tells a client besides results: ``ServiceError`` (an HTTP status and a one-line detail),
``public_text`` (locations cut from a message), the time of day and an explanation's one-line ``why``.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Optional

from convfm.features.fields import EXTRA_VOCAB

# Where a message names a location: a URI (scheme://..., with any query string) or an absolute path.
_LOCATION = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]*|(?<![\w/.:~-])/[^\s'\":]+")


class ServiceError(Exception):
    """An answer that is not a result: HTTP status + one-line detail (404 unknown job, 503 not loaded...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def utc_now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def public_text(text: str) -> str:
    """``text`` for a client: every URI or absolute path cut to its last two parts (``NAME/v0002``,
    ``v0002/weights.pt``), without scheme, host, query string or the folders above. The log keeps the original."""
    def cut(match: re.Match) -> str:
        location, end = re.fullmatch(r"(.*?)([:,;.)]*)", match[0]).groups()  # sentence punctuation stays
        path = location.split("?", 1)[0].split("#", 1)[0]
        path = path.split("://", 1)[1] if "://" in path else path
        parts = [p for p in path.split("/") if p][1 if "://" in location else 0:]  # a URI's host goes
        return ("/".join(parts[-2:]) or "(location)") + end

    return _LOCATION.sub(cut, text)


def why_line(explanation: dict[str, Any]) -> str:
    """The explanation in one line: what the user and job share, as facts, and the terms that raised the job's
    score (a term that lowered it is no reason, and stays in ``explanation``). Field pairs come last and only
    those ``CatalogRanker.explain`` kept: it never credits a missing or catalog-wide constant field, so a job may
    have none."""
    def raised(term: Optional[float]) -> bool:
        return term is not None and term > 0

    parts = []
    similar = explanation.get("similar_to")
    if similar is not None and similar["similarity"] > 0:
        parts.append(f"similar to a job you applied to: {similar.get('title') or similar['job_id']}")
    if raised(explanation.get("history_match")):
        parts.append(f"like your recent jobs ({explanation['history_match']:+.3g})")
    if explanation["matching_skills"]:
        term = explanation.get("skill_match")
        parts.append("matching skills: " + ", ".join(explanation["matching_skills"][:5])
                     + (f" ({term:+.3g})" if raised(term) else ""))
    parts += [f"same {vocab.removeprefix(EXTRA_VOCAB).replace('_', ' ')}: {', '.join(values)}"
              for vocab, values in explanation["matching"].items()]
    if raised(explanation.get("profile_match")):
        parts.append(f"fits your profile ({explanation['profile_match']:+.3g})")
    parts += [f"{x['user_field'].replace('_', ' ')} x {x['job_field'].replace('_', ' ')} ({x['value']:+.3g})"
              for x in explanation["interactions"][:2] if raised(x["value"])]
    return "; ".join(parts)
