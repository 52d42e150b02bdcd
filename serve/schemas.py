"""Request models of the HTTP API (pydantic v2). Bounds live here, so bad input is a 422; the answers' models
are ``serve.responses``.

Requests are strict (no "10" for 10, no true for 1) and forbid unknown keys, so a typo such as ``"filter"``
is reported instead of silently ignored. Ids may be strings or integers; both mean the same id (``12`` ==
``"12"``), as everywhere in convfm.
"""
from __future__ import annotations

import collections
import datetime as dt
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator,
)

from convfm.config import EVENTS
from convfm.data.schema import JOBS, USERS
from convfm.store.event_log import FUTURE_SLACK, event_time, parse_time
from convfm.store.registry import VERSION_PATTERN
from convfm.validate import lone_surrogate
from serve.traffic import check_traffic

MAX_K = 100
MAX_JOB_IDS = 1000
MAX_HISTORY = 200
MAX_EVENTS = 1000


def _unicode(value: str) -> str:
    """``value`` when it can be written as UTF-8, else ValueError. JSON can carry a lone UTF-16 surrogate
    (``"\\ud800"``) that no UTF-8 file or Arrow string holds: pydantic's own check is skipped behind a
    BeforeValidator, and a job id holding one was stored, then failed every later read of the live catalog."""
    at = lone_surrogate(value)
    if at is not None:
        raise ValueError(f"not valid Unicode text: a lone surrogate (U+{ord(value[at]):04X}) at character {at + 1}")
    return value


def _id_text(value: Any) -> Any:
    """Ids are strings, stripped; an integer id is its decimal string; anything else is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"an id must be a string or an integer, got {type(value).__name__}")
    return _unicode(value).strip()


def _stripped(value: Any) -> Any:
    """Strings stripped before their length is checked: pydantic's ``strip_whitespace`` strips after
    ``min_length``, so "   " passed as a non-empty id and was stored as "". (A BeforeValidator goes after the
    StringConstraints it precedes: written before them, their errors read "Value should have at least 1 item".)"""
    return _unicode(value).strip() if isinstance(value, str) else value


def _skill(value: Any) -> Any:
    """A skill is ``_stripped`` text without ";", which separates skills in the data files and the live catalog
    (``"a;b"`` was stored as two skills)."""
    value = _stripped(value)
    if isinstance(value, str) and ";" in value:
        raise ValueError(f"a skill cannot contain ';' (it separates skills), got {value[:50]!r}: give each as its own")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=200), BeforeValidator(_id_text)]
SHORT_TEXT = 200  # characters of a short value: a location, a company, an extra column's value but a text one's
ShortText = Annotated[str, StringConstraints(max_length=SHORT_TEXT), BeforeValidator(_stripped)]
# A filter's value: a blank one matched no job, an empty answer that looked like a real one
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=SHORT_TEXT), BeforeValidator(_stripped)]
TEXT_CHARS = 20_000  # a job's description, or an extra text column's value
Skill = Annotated[str, StringConstraints(min_length=1, max_length=100), BeforeValidator(_skill)]


def _extra_value(value: Any) -> Any:
    """An extra column's value: text (at most TEXT_CHARS characters, HTML included), a list of text, or a finite
    number (kept as its text: "3", "2.5")."""
    if isinstance(value, str) and len(value) > TEXT_CHARS:
        raise ValueError(f"a value takes at most {TEXT_CHARS} characters (HTML included), got {len(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("a number must be finite")
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if not isinstance(value, (str, list)):
        raise ValueError(f"a value must be text, a number or a list of text, got {type(value).__name__}")
    return value


# The model's extra columns (``DataConfig.extra_columns``) by their names in the data files (case and
# punctuation aside): a value (up to a description's length for a text column, SHORT_TEXT for the others: the
# Scorer checks the kinds), or a list for a list column. A job's names no model reads are kept (the live
# catalog outlives models); a profile's are refused (the Scorer).
ExtraValues = Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=200)],
                             Annotated[Union[Annotated[str, StringConstraints(max_length=TEXT_CHARS),
                                                       BeforeValidator(_stripped)],
                                             Annotated[list[Skill], Field(max_length=100)]],
                                       BeforeValidator(_extra_value)]],
                        Field(max_length=50)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Profile(Request):
    """A user the model may never have seen: skills, location and experience level (any subset, not none)."""

    skills: list[Skill] = Field(default_factory=list, max_length=100, examples=[["python", "sql"]])
    location: Optional[ShortText] = Field(None, examples=["Berlin"])
    experience_level: Optional[ShortText] = Field(None, examples=["senior"])
    extra: ExtraValues = Field(default_factory=dict, examples=[{"industry": "finance"}],
                               description="values of the model's extra user columns, by column name")

    @model_validator(mode="after")
    def _not_empty(self) -> "Profile":
        _no_canonical(self.extra, USERS.names, "profile")
        if not self.skills and not self.location and not self.experience_level and not any(self.extra.values()):
            raise ValueError("profile needs at least one of skills, location, experience_level, extra")
        return self


def _no_canonical(extra: dict[str, Any], canonical: tuple[str, ...], what: str) -> None:
    taken = sorted(set(extra) & set(canonical))
    if taken:
        raise ValueError(f"extra: {taken} are {what} fields of their own; give them as such")


class Filters(Request):
    """Only jobs matching every given filter (case-insensitive); salary_min keeps jobs whose salary range
    reaches it (salary_max, else salary_min, >= salary_min; jobs without a salary are dropped)."""

    location: Optional[FilterValue] = None
    job_type: Optional[FilterValue] = None
    experience_level: Optional[FilterValue] = None
    salary_min: Optional[Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]] = None
    include_expired: bool = Field(False, description="also jobs the live catalog has expired")


class UserRequest(Request):
    user_id: Optional[Id] = Field(None, examples=["u000001"])
    profile: Optional[Profile] = None
    history: Optional[list[Id]] = Field(
        None, max_length=MAX_HISTORY, examples=[["j000012", "j000345"]],
        description="job ids the user applied to or saved, oldest first; replaces the stored history (for a "
                    "user the service does not know, or events newer than the model)")

    @model_validator(mode="after")
    def _user_or_profile(self) -> "UserRequest":
        if self.user_id is None and self.profile is None and not self.history:
            raise ValueError("give user_id, profile or history (a profile or history overrides the stored one)")
        return self


class RecommendRequest(UserRequest):
    k: int = Field(10, ge=1, le=MAX_K, description=f"number of jobs, 1..{MAX_K}")
    filters: Filters = Field(default_factory=Filters)
    exclude_seen: bool = Field(True, description="drop jobs the user already interacted with")
    explain: bool = Field(False, description="give each item its `why` and `explanation`; off by default as "
                          "they cost 13-18% of a k=10 request on a 10k-job catalog (benchmarks/serve_load.py "
                          "--explain), a share that grows as scoring gets faster")


class ScoreRequest(UserRequest):
    job_ids: list[Id] = Field(min_length=1, max_length=MAX_JOB_IDS, description=f"1..{MAX_JOB_IDS} job ids")


def _utc(value: dt.datetime) -> dt.datetime:
    """A naive UTC datetime (naive input is taken as UTC, as the jobs table's dates are) within 1970..2100."""
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:  # a zone offset past year 1 or 9999
            raise ValueError("must be between 1970-01-01 and 2100-01-01") from None
    if not dt.datetime(1970, 1, 1) <= value < dt.datetime(2100, 1, 1):
        raise ValueError("must be between 1970-01-01 and 2100-01-01")
    return value


# ISO-8601 text (no zone: UTC) or epoch seconds, as in the files (not pydantic's own reading of numbers, which takes
# large ones as milliseconds); the OpenAPI schema says both
EPOCH_OR_ISO = WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}]})
Time = Annotated[dt.datetime, BeforeValidator(parse_time), Field(strict=False), AfterValidator(_utc), EPOCH_OR_ISO]
Salary = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]  # NaN read "less than or equal to 1e9"


class JobPosting(Request):
    """A job to add or replace (every content field; one not given is missing). Without ``posted_at`` a job
    the catalog holds keeps its posting time and, without ``expires_at``, its expiry; a new one is posted when
    written. ``expires_at`` takes it out of recommendations from then on, else it closes ``job_lifetime_days``
    after its posting."""

    job_id: Id
    title: Optional[Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]] = None
    description: Optional[Annotated[str, StringConstraints(max_length=TEXT_CHARS)]] = None
    skills: list[Skill] = Field(default_factory=list, max_length=100)
    location: Optional[ShortText] = None
    company: Optional[ShortText] = None
    job_type: Optional[ShortText] = None
    experience_level: Optional[ShortText] = None
    salary_min: Optional[Salary] = None
    salary_max: Optional[Salary] = None
    extra: ExtraValues = Field(default_factory=dict, description="values of the model's extra job columns "
                               "(data.extra_columns), by column name; a list for a list column")
    posted_at: Optional[Time] = Field(None, description="ISO-8601 (no zone: UTC) or epoch seconds; at most a day ahead")
    expires_at: Optional[Time] = Field(None, description="ISO-8601 (no zone: UTC) or epoch seconds")

    @model_validator(mode="after")
    def _ordered(self) -> "JobPosting":
        _no_canonical(self.extra, JOBS.names, "job")
        if self.salary_min is not None and self.salary_max is not None and self.salary_min > self.salary_max:
            raise ValueError("salary_min is above salary_max")
        if self.posted_at is not None and self.expires_at is not None and self.expires_at <= self.posted_at:
            raise ValueError("expires_at must be after posted_at")
        latest = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + FUTURE_SLACK  # (times here: naive UTC)
        if self.posted_at is not None and self.posted_at > latest:
            raise ValueError(f"posted_at {self.posted_at.isoformat()} is more than a day ahead: post a scheduled "
                             "job when it opens (a live job counts as posted from its posted_at on)")
        return self


class JobsRequest(Request):
    """``POST /jobs``: jobs to add or replace and job ids to expire now, written as one catalog version."""

    upsert: list[JobPosting] = Field(default_factory=list, max_length=MAX_JOB_IDS)
    expire: list[Id] = Field(default_factory=list, max_length=MAX_JOB_IDS)

    @model_validator(mode="after")
    def _one_change_per_id(self) -> "JobsRequest":
        ids = [job.job_id for job in self.upsert]
        if not ids and not self.expire:
            raise ValueError("give jobs to upsert or job ids to expire")
        repeated = sorted(i for i, n in collections.Counter(ids + self.expire).items() if n > 1)
        if repeated:
            raise ValueError(f"each job id once per request (upsert or expire), repeated: {repeated[:5]}")
        return self


Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]


class ReloadRequest(Request):
    version: Optional[Version] = Field(
        None, description="registry version such as v0002; omitted (and no traffic): the registry entry's latest")
    traffic: Optional[dict[Version, Annotated[float, Field(gt=0, le=1)]]] = Field(
        None, examples=[{"v0007": 0.9, "v0008": 0.1}],
        description="an A/B split instead of one version: users routed by a hash of their id; weights sum to 1")

    @model_validator(mode="after")
    def _one_target(self) -> "ReloadRequest":
        if self.traffic is not None:
            if self.version is not None:
                raise ValueError("give version or traffic, not both")
            check_traffic(self.traffic)  # a ConfigError is a ValueError: 422 naming the field
        return self


class Event(Request):
    """One feedback event. ``event_id`` is the client's: an id already in the log is ignored (a retry)."""

    event_id: Id = Field(examples=["e-7f3a9c"])
    type: Literal[EVENTS]
    user_id: Id = Field(examples=["u000001"])
    job_id: Id = Field(examples=["j000012"])
    timestamp: Annotated[dt.datetime, BeforeValidator(event_time), EPOCH_OR_ISO] = Field(
        description="ISO-8601 (no zone: UTC) or epoch seconds; not before 1970, not more than a day ahead",
        examples=["2026-12-02T12:00:00Z"])
    impression_id: Optional[Annotated[str, StringConstraints(min_length=1, max_length=64),
                                      BeforeValidator(_stripped)]] = Field(
        None, description="the impression_id of the /recommend response that showed the job")
    model_version: Optional[Annotated[str, StringConstraints(min_length=1, max_length=64),
                                      BeforeValidator(_stripped)]] = None  # "   " was stored as a version


class EventsRequest(Request):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS, description=f"1..{MAX_EVENTS} events")
