"""The live catalog inside a serving process: the store's deltas (``convfm.store.live_catalog``) applied to a
``Scorer``, plain Python (no Ray), so the Ray deployments and the in-process backend share it.

Each Scorer carries a ``LiveJobs``: the catalog version it has applied, every row's expiry time, and the lock
that keeps an apply from running while a batch reads the catalog. ``catch_up`` reads the deltas a scorer lacks
and applies them: upserted jobs are encoded with the fitted extractor (an unknown id reads the unknown-id slot;
its content fields count), their job sides computed alone and appended to the ranker's (or written over an id
it already has) and indexed when the scorer has a retrieval index; display columns, filter values, salaries and
the popularity fallback follow (a new job has no interactions yet: popularity 0, last among equals). Expired
jobs stay in the catalog (``GET /jobs/{id}`` shows them) but ``/recommend`` leaves them out unless
``filters.include_expired``: an expiry is a time, checked per request in the filter mask (which the retrieval
index applies before its candidate scan), so the index keeps expired rows. The model's own jobs also expire at
their training data's expiry (``serve.model_jobs``), until a delta replaces them.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.liveness import ALWAYS, NEVER
from convfm.data.splitting import micros_iso
from convfm.errors import StorageError
from convfm.features.context import now_micros
from convfm.features.text import clean_value
from convfm.store.live_catalog import CONTENT_FIELDS, CatalogConflict, CatalogStore, Delta, grown
from convfm.store.serving_data import DISPLAY_COLUMNS
from serve.extra_values import unread_extra
from serve.replies import ServiceError
from serve.scorer import FILTER_COLUMNS

log = logging.getLogger(__name__)


def catch_up(scorer: Any, store: Optional[CatalogStore], want: Optional[int] = None) -> None:
    """Apply ``store``'s deltas after ``scorer.live_jobs.version`` up to ``want`` (None: the latest on the store).
    Raises ArtifactError/StorageError when a delta cannot be read; the scorer then keeps its version."""
    if store is None:
        return
    with scorer.live_jobs.lock:
        if want is not None and scorer.live_jobs.version >= want:
            return
        apply_deltas(scorer, store.read(after=scorer.live_jobs.version, upto=want))


def apply_deltas(scorer: Any, deltas: Sequence[Delta]) -> None:
    """Deltas into ``scorer`` (under its lock): ``LiveJobs.apply``, then the upserted rows' display columns,
    filter values, salaries and popularity (a new job's 0; a replaced job keeps its own)."""
    with scorer.live_jobs.lock:
        before = scorer.n_jobs
        rows, frame = scorer.live_jobs.apply(deltas, scorer.extractor, scorer.put_jobs)
        if len(rows):
            _show_upserted(scorer, before, rows, frame)


def _show_upserted(scorer: Any, before: int, rows: np.ndarray, frame: pd.DataFrame) -> None:
    """The per-row data only a service keeps (``before``: its rows until this delta), for the upserted ``rows``."""
    n = scorer.n_jobs = scorer.ranker.n_jobs
    scorer.popular = grown(scorer.popular, n, 0.0)
    for column in DISPLAY_COLUMNS:
        values = scorer.columns.setdefault(column, [None] * before)
        values.extend([None] * (n - len(values)))
        given = frame[column].tolist()
        for row, value in zip(rows.tolist(), given):
            values[row] = None if value == "" or pd.isna(value) else value
    for column in FILTER_COLUMNS:
        old = scorer.filter_values.get(column, np.full(before, "", dtype=object))
        scorer.filter_values[column] = grown(old.astype(object), n, "")
        scorer.filter_values[column][rows] = [clean_value(v) for v in frame[column]]
    salary = frame[["salary_max", "salary_min"]].to_numpy(np.float64)
    top = np.full(n, np.nan) if scorer.salary_top is None else grown(scorer.salary_top, n, np.nan)
    with np.errstate(invalid="ignore"):
        top[rows] = np.fmax(salary[:, 0], salary[:, 1])
    scorer.salary_top = top


# ---------------------------------------------------------------------------------------- service side
def write_jobs(store: Optional[CatalogStore], request: Any, known: Optional[Mapping[str, Optional[int]]] = None,
               columns: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """``POST /jobs``: one delta with the request's upserts and expirations -> the response body, which counts
    the expired ids the serving catalog holds and lists those it does not (``known``: ``Scorer.known_jobs``,
    None for such an id; None: not asked, every id counted), and the ``extra`` keys that none of ``columns``
    (the serving model's extra job columns; None: not asked) reads. Both are written all the same: another
    version's catalog, or the next model's, may hold or read them. Raises ServiceError: 422 for an extra value
    of a kind its model column cannot take (nothing written), 409 when another writer took the version, 503
    without a live store or when storage failed."""
    if store is None:
        raise ServiceError(503, "the live catalog is off: this service has no live store")
    unread = list(dict.fromkeys(key for i, job in enumerate(request.upsert) if columns is not None
                                for key in unread_extra(columns, job.extra, f"upsert.{i}.extra")))
    unknown = [j for j in request.expire if known is not None and known.get(j) is None]
    jobs = [{"job_id": job.job_id, **{f: getattr(job, f) for f in CONTENT_FIELDS},
             "posted_at": _micros(job.posted_at), "expires_at": _micros(job.expires_at),
             **({"extra": job.extra} if job.extra else {})} for job in request.upsert]
    try:
        delta = store.append(jobs, request.expire)
    except CatalogConflict as exc:
        raise ServiceError(409, str(exc)) from None
    except ValueError as exc:  # what the request's validation lets through and the store still refuses
        raise ServiceError(422, f"upsert: {exc}") from None
    except (StorageError, OSError) as exc:
        log.warning("live catalog write failed: %s", exc)
        raise ServiceError(503, "the live store could not be written; nothing was kept, retry") from None
    expired = len(delta.expire) - len(unknown)  # an id the catalog does not hold expired nothing (yet)
    return {"catalog_version": delta.version, "upserted": len(delta.upsert), "expired": expired,
            "unknown_expire": unknown, "unread_extra": unread}


def _micros(value: Any) -> Optional[int]:
    return None if value is None else int(pd.Timestamp(value).value // 1000)


def answer(scorer: Any, method: str, requests: Sequence[Any]) -> list[Any]:
    """``scorer.<method>(requests)`` while no delta is applied, each result stamped with the catalog version."""
    with scorer.live_jobs.lock:
        results = getattr(scorer, method)(requests)
        version = scorer.live_jobs.version
    return [{**r, "catalog_version": version} if isinstance(r, dict) else r for r in results]


def job_detail(scorer: Any, job_id: str) -> dict[str, Any]:
    """``GET /jobs/{id}``: the job's display fields, its live expiry and the catalog version."""
    now = now_micros()
    with scorer.live_jobs.lock:
        record = scorer.job(job_id)
        row = scorer.extractor.job_rows[str(job_id)]
        expires, expired = scorer.expires(row, now), scorer.expired(row, now)
        version, extra = scorer.live_jobs.version, scorer.extractor.job_extra_values(row)
        recency = scorer.ranker.recency  # every row's posting time, the live catalog's included (put_jobs)
        posted = int(recency.posted[row]) if recency is not None else int(scorer.live_jobs.posted[row])
    return {**record, "posted_at": None if posted == ALWAYS else micros_iso(posted),
            "expires_at": None if expires == NEVER else micros_iso(expires), "expired": expired, "extra": extra,
            "catalog_version": version}

