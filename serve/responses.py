"""Response models of the HTTP API (pydantic v2): what each endpoint answers, in its OpenAPI schema."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class Interaction(BaseModel):
    user_field: str
    job_field: str
    value: float = Field(description="FM pair term <e_user_field, e_job_field>, in logit units")


class SimilarJob(BaseModel):
    job_id: str
    title: Optional[str] = None
    similarity: float = Field(description="cosine of the two jobs' summed field embeddings")


class Explanation(BaseModel):
    interactions: list[Interaction] = Field(default_factory=list)
    matching_skills: list[str] = Field(default_factory=list)
    skill_match: Optional[float] = Field(None, description="the skill-match term's part of the logit, when the "
                                         "user and the job share a skill and the model has the term")
    history_match: Optional[float] = Field(None, description="the history-match terms' part of the logit, when "
                                           "the job shares a skill, company or location with the user's recent "
                                           "jobs and the model has the terms")
    profile_match: Optional[float] = Field(None, description="the profile-match terms' part of the logit, when "
                                           "the job is in the user's location or at their experience level and "
                                           "the model has the terms")
    matching: dict[str, list[str]] = Field(default_factory=dict)
    similar_to: Optional[SimilarJob] = Field(None, description="the most similar job in the user's history")


class Job(BaseModel):
    job_id: str
    title: Optional[str] = None
    company: Optional[str] = None
    location: Optional[str] = None
    job_type: Optional[str] = None
    experience_level: Optional[str] = None
    salary_min: Optional[float] = None
    salary_max: Optional[float] = None


class RecommendedJob(Job):
    score: float = Field(description="probability of a positive interaction (popularity for fallbacks)")
    why: str = ""
    explanation: Explanation = Field(default_factory=Explanation)


class RecommendResponse(BaseModel):
    user_id: Optional[str]
    model_version: str
    impression_id: str = Field(description="unique per response; send it back with the events it led to")
    catalog_version: Optional[int] = Field(None, description="live catalog version the answer saw")
    cold_start: bool = Field(description="scored from the request's profile or history, not a known user's")
    fallback: Optional[str] = Field(None, description="'popular' when the user is unknown and has no profile")
    unknown_history: list[str] = Field(default_factory=list, description="job ids of the request's history the "
                                       "catalog does not know: they count as unknown jobs, without their fields")
    items: list[RecommendedJob]


class EventsResponse(BaseModel):
    accepted: int = Field(description="events written to the log (acknowledged: stored before this answer)")
    duplicates: list[str] = Field(description="event ids already in the log (or repeated in the body): ignored")
    unknown_jobs: list[str] = Field(description="job ids the serving catalog does not know: stored, flagged")
    before_posting: list[str] = Field(default_factory=list, description="ids of events dated before their job's "
                                      "posting: stored; evaluation skips them (the job not live then), training "
                                      "reads the job as just posted")
    segment: Optional[str] = Field(description="the log segment written; null when every event was a duplicate")
    position: int = Field(description="segments in the log after this call")


class JobDetail(Job):
    posted_at: Optional[str] = Field(None, description="when it was posted (UTC); null: no posting date")
    expires_at: Optional[str] = Field(None, description="when it leaves /recommend (UTC): the live catalog's "
                                      "expiry, or the model's data's (a replayed log's on its clock, GET /model's "
                                      "model_time); null: never")
    extra: dict[str, Any] = Field(default_factory=dict, description="what the model reads of the board's own "
                                  "columns (data.extra_columns): normalised values, null where missing or unknown "
                                  "to it; text columns are not kept")
    expired: bool = False
    catalog_version: int = Field(description="live catalog version the answer saw")


class JobsResponse(BaseModel):
    catalog_version: int = Field(description="the catalog version this change created")
    upserted: int
    expired: int = Field(description="ids expired that the serving model's catalog holds (not unknown_expire)")
    unknown_expire: list[str] = Field(default_factory=list, description="ids to expire that the serving model's "
                                      "catalog does not hold (written all the same: another version or the next "
                                      "model may hold them)")
    unread_extra: list[str] = Field(default_factory=list, description="extra keys the serving model reads no "
                                    "column for (kept all the same: another version or the next model may)")


class JobScore(BaseModel):
    job_id: str
    score: Optional[float] = Field(description="None for job ids the catalog does not know")


class ScoreResponse(BaseModel):
    user_id: Optional[str]
    model_version: str
    catalog_version: Optional[int] = Field(None, description="live catalog version the answer saw")
    cold_start: bool
    fallback: Optional[str] = None
    scores: list[JobScore] = Field(description="one per requested job id, in request order")
    unknown_job_ids: list[str]


class Health(BaseModel):
    status: str
    model: Optional[str] = None
    version: Optional[str] = None
    error: Optional[str] = None


class ModelInfo(BaseModel):
    name: str
    version: str
    path: str
    loaded_at: str
    metrics: dict[str, Any]
    jobs: int
    open_jobs: Optional[int] = Field(None, description="the catalog's jobs open now, the ones a request ranks "
                                     "(the rest expired, or posted ahead)")
    users: int
    fields: list[str]
    extra_columns: dict[str, dict[str, str]] = Field(default_factory=dict, description="the board's own columns "
                                                     "the model reads, per table (data.extra_columns)")
    catalog_version: Optional[int] = None
    model_jobs_expire: Optional[bool] = Field(None, description="whether the model's own jobs leave /recommend at "
                                              "their training data's expiry, read at model_time (false: no job "
                                              "calendar, none open even then, or all replaced by the live "
                                              "catalog)")
    model_time: Optional[str] = Field(None, description="when every one of the model's jobs had expired (a "
                                      "replayed log): the end of its training data, the time its jobs' ages and "
                                      "expiry are read at; null: now")
    score_cache: Optional[dict[str, int]] = Field(None, description="the answering replica's kept scans: entries, "
                                                  "budget_mib, hits, misses, rescored_rows")
    last_reload: Optional[dict[str, Any]] = None
    events: Optional[dict[str, Any]] = Field(None, description="the answering replica's overlay of logged events: "
                                             "segments applied, held (events in memory), cut_at (the last segment "
                                             "left out: the served models were trained on the log up to it; null: "
                                             "every event held)")
    batching: Optional[dict[str, Any]] = None
    torch_threads: Optional[int] = Field(None, description="torch threads of the replica that answered")
    proxy: Optional[str] = Field(None, description="the HTTP proxy in front: serve (Ray Serve's own) or haproxy")
    traffic: Optional[dict[str, float]] = Field(None, description="the A/B split being served, if any")


class ErrorResponse(BaseModel):
    """Any refusal that is not a validation error: 401/403 auth, 404, 409, 413, 503, 504."""

    detail: str


class FieldError(BaseModel):
    loc: list[str] = Field(description="where: 'body', 'path' or 'query', then the field path")
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: a one-line summary and the per-field errors (the input is never echoed)."""

    message: str
    detail: list[FieldError]


class ReloadResponse(BaseModel):
    ok: bool
    version: Optional[str] = Field(description="the version serving after this call (a split's control version)")
    traffic: Optional[dict[str, float]] = Field(None, description="the A/B split serving after this call, if any")
    previous_version: Optional[str] = None
    error: Optional[str] = None
    replicas: list[dict[str, Any]] = Field(default_factory=list)
