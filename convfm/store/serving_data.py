"""What serving needs from the training data, written at training time beside the model as ``serving.json``
(never pickle) and read back by ``serve/``. This module builds and parses that file; it runs no service.

- ``jobs``: display metadata per catalog job (title, company, location, job type, level, salary range);
  the extractor keeps only encoded features, so titles and original spelling come from here;
- ``seen``: every (user_id, job_id) pair the user interacted with (``interacted_pairs``: never a sampled
  negative, a job never shown), so ``exclude_seen`` can drop jobs a user already saw;
- ``popularity``: the training split's ``PopularityBaseline``, for unknown users without a profile;
- ``event_log`` (when trained with ``--events``): the ``LogMark`` of the service's event log the data held.

Write it with ``save_model_dir(..., extra_json=serving_extra_json(data))`` so the manifest covers it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from convfm.config import DataConfig
from convfm.data.loading import load_job_market
from convfm.errors import ArtifactError, ConfigError
from convfm.evaluation.metrics import PopularityBaseline
from convfm.features.text import column_strings
from convfm.store.log_mark import LogMark

SERVING_NAME = "serving"  # -> serving.json in the model directory
SERVING_FORMAT_VERSION = 1
DISPLAY_TEXT_COLUMNS = ("title", "company", "location", "job_type", "experience_level")
SALARY_COLUMNS = ("salary_min", "salary_max")
DISPLAY_COLUMNS = (*DISPLAY_TEXT_COLUMNS, *SALARY_COLUMNS)  # what a response shows for a job, beside its job_id


def jobs_metadata(jobs: pd.DataFrame) -> dict[str, list]:
    """Columns of the jobs table as JSON lists: strings ("" when missing) and salaries (None when missing)."""
    out: dict[str, list] = {"job_id": column_strings(jobs, "job_id").tolist()}
    for column in DISPLAY_TEXT_COLUMNS:
        if column in jobs.columns:
            out[column] = column_strings(jobs, column).tolist()
    for column in SALARY_COLUMNS:
        if column in jobs.columns:
            values = pd.to_numeric(jobs[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            out[column] = [float(v) if np.isfinite(v) else None for v in values]
    return out


def display_jobs(jobs: pd.DataFrame) -> pd.DataFrame:
    """The catalog's ``job_id`` and display columns (what serving.json keeps of the jobs table)."""
    return jobs[[c for c in ("job_id", *DISPLAY_COLUMNS) if c in jobs.columns]]


def serving_payload(data: Any, jobs: Optional[pd.DataFrame] = None) -> dict[str, Any]:
    """The ``serving.json`` document of a job-market ``PreparedData``: jobs from ``jobs``, else the table
    ``prepare_data`` kept (``data.jobs``), else reloaded from its config (data prepared some other way)."""
    config: DataConfig = data.config
    if config.kind != "jobs":
        raise ConfigError(f"kind: serving needs a job-market model (kind 'jobs'), got {config.kind!r}")
    if jobs is None:
        jobs = getattr(data, "jobs", None)
    if jobs is None:
        jobs = load_job_market(config).jobs
    seen = data.seen  # the interacted pairs (sampled negatives left out); None: every example's pair
    if seen is None:
        frames = [f[["user_id", "job_id"]] for f in data.frames.values() if len(f)]
        seen = pd.concat(frames, ignore_index=True).drop_duplicates() if frames else pd.DataFrame(
            {"user_id": [], "job_id": []})
    read = getattr(data, "event_log", None)
    mark = None if read is None else LogMark(read["last_segment"], read["segments"],
                                             frozenset(config.positive_events + config.negative_events))
    return payload_of(jobs, seen, data.popularity or PopularityBaseline().fit(data.frames["train"]), mark)


def payload_of(jobs: pd.DataFrame, seen: pd.DataFrame, popularity: PopularityBaseline,
               mark: Optional[LogMark] = None) -> dict[str, Any]:
    """The ``serving.json`` document from its parts: the catalog, (user_id, job_id) pairs to exclude, the
    fallback baseline, and how much of the service's event log the data held (``LogMark``)."""
    seen = seen.sort_values(["user_id", "job_id"], kind="stable")
    return {
        "format_version": SERVING_FORMAT_VERSION,
        "jobs": jobs_metadata(jobs),
        "seen": {"user_id": seen["user_id"].astype(str).tolist(), "job_id": seen["job_id"].astype(str).tolist()},
        "popularity": popularity.to_dict(),
        **({} if mark is None else {"event_log": mark.to_dict()}),
    }


def serving_extra_json(data: Any, jobs: Optional[pd.DataFrame] = None) -> dict[str, dict[str, Any]]:
    """``{"serving": payload}``, ready for ``save_model_dir(extra_json=...)``."""
    return {SERVING_NAME: serving_payload(data, jobs)}


@dataclasses.dataclass
class ServingData:
    """Parsed ``serving.json``: jobs metadata frame, seen job ids per user, popularity baseline."""

    jobs: pd.DataFrame
    seen: dict[str, np.ndarray]
    popularity: Optional[PopularityBaseline]
    event_log: Optional[LogMark] = None  # the event log's segments the training data held (None: none)

    @classmethod
    def empty(cls) -> "ServingData":
        return cls(pd.DataFrame({"job_id": pd.Series([], dtype=object)}), {}, None)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], source: str = "serving.json") -> "ServingData":
        if not isinstance(payload, Mapping) or payload.get("format_version") != SERVING_FORMAT_VERSION:
            version = payload.get("format_version") if isinstance(payload, Mapping) else None
            raise ArtifactError(f"{source}: format_version {version!r}, this convfm reads {SERVING_FORMAT_VERSION}")
        try:
            jobs = pd.DataFrame(dict(payload["jobs"]))
            if "job_id" not in jobs.columns:
                raise KeyError("jobs.job_id")
            jobs["job_id"] = jobs["job_id"].astype(str)
            for column in SALARY_COLUMNS:
                if column in jobs.columns:
                    jobs[column] = pd.to_numeric(jobs[column], errors="coerce")
            pairs = pd.DataFrame({"user_id": list(payload["seen"]["user_id"]),
                                  "job_id": list(payload["seen"]["job_id"])}, dtype=object)
            seen = {str(user): group.to_numpy(dtype=object) for user, group in pairs.groupby("user_id")["job_id"]}
            popularity = payload.get("popularity")
            baseline = PopularityBaseline.from_dict(popularity) if popularity else None
            mark = LogMark.from_dict(payload["event_log"], source) if "event_log" in payload else None
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{source}: invalid serving data ({type(exc).__name__}: {exc})") from None
        return cls(jobs.drop_duplicates("job_id"), seen, baseline, mark)
