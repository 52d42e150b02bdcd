"""The scoring code under the service: plain Python and torch, no Ray, so it is tested on its own.

``Scorer`` is one loaded model version: ``CatalogRanker`` (fast full-catalog path; with ``retrieval_candidates``
a ``RetrievalIndex`` in front of it, for catalogs too large to scan per request), job metadata for responses,
seen jobs per user and a popularity fallback (from the model directory's ``serving.json``; see
``convfm.store.serving_data``). Its ``*_many`` methods take a list of requests and answer each in one batched pass;
a request that cannot be answered gets a ``ServiceError`` in its slot, never an exception for the batch.
``serve.model_slot.ModelSlot`` holds the serving ``Scorer`` and replaces it.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from convfm.config import DataConfig
from convfm.store.artifacts import LoadedModel, load_model_dir
from convfm.store.live_jobs import LiveJobs
from convfm.errors import ArtifactError
from convfm.jsonfile import finite_plain
from convfm.features.base import concat_rows
from convfm.features.context import now_micros
from convfm.features.fields import EncodedTable
from convfm.model.ranking import CatalogRanker
from convfm.model.retrieval import RetrievalIndex
from convfm.model.open_rows import rows_worth_a_view
from convfm.model.score_cache import ScoreCache
from convfm.data.splitting import micros_iso
from convfm.store.registry import model_identity
from convfm.store.serving_data import DISPLAY_COLUMNS, SERVING_NAME, ServingData
from convfm.features.text import clean_value
from serve.model_jobs import ModelJobs
from serve.extra_values import profile_extra
from serve.replies import ServiceError, public_text, utc_now_text, why_line
from serve.schemas import Filters, RecommendRequest, ScoreRequest

if TYPE_CHECKING:
    from serve.events import LiveEvents

log = logging.getLogger(__name__)
FILTER_COLUMNS = ("location", "job_type", "experience_level")
DECODABLE = {"job_location": "location", "company": "company", "job_type": "job_type",
             "job_experience": "experience_level"}


class Scorer:
    """One loaded, validated model version and everything needed to answer requests with it.

    ``retrieval_candidates`` K > 0 ranks each user's K best candidates of the index exactly instead of scanning
    the whole catalog (``ServeConfig.retrieval_candidates``); the index is built here, at model load. The exact
    scan keeps each recent user's scores for their next request within ``score_cache_mib``
    (``convfm.model.score_cache``; 0 keeps none)."""

    def __init__(self, loaded: LoadedModel, serving: ServingData, retrieval_candidates: int = 0,
                 score_cache_mib: int = 0) -> None:
        extractor = loaded.extractor
        if getattr(extractor, "kind", None) != "jobs" or extractor.job_catalog is None:
            raise ArtifactError(f"{loaded.path}: serving needs a job-market model (JobFeatureExtractor)")
        self.extractor, self.path, self.metrics = extractor, loaded.path, finite_plain(loaded.metrics)
        self.name, self.version = model_identity(loaded.path)
        popularity = extractor.popularity
        self.model_jobs = ModelJobs(getattr(extractor, "recency_encoder", None), extractor.history.times,
                                    len(extractor.job_catalog), None if popularity is None else popularity.end)
        now = now_micros()
        self.model_jobs.hold(now)  # its jobs held at a replayed log's end first: the first request reads nothing
        self.ranker = CatalogRanker(loaded.model, extractor, time=now)
        self.n_jobs = self.ranker.n_jobs
        meta = serving.jobs.set_index("job_id").reindex(pd.Index(extractor.job_ids, dtype=object))
        for column, values in _decoded_columns(extractor).items():
            if column not in meta.columns:  # no serving.json: normalised values from the encoded catalog
                meta[column] = values
        self.columns = {c: [None if pd.isna(v) else v for v in meta[c]] for c in DISPLAY_COLUMNS if c in meta.columns}
        self.filter_values = {c: np.array([clean_value(v) if isinstance(v, str) else "" for v in meta[c]])
                              for c in FILTER_COLUMNS if c in meta.columns}
        salary = [meta[c].to_numpy(dtype=np.float64) for c in ("salary_max", "salary_min") if c in meta.columns]
        self.salary_top = np.fmax(*salary) if len(salary) == 2 else (salary[0] if salary else None)
        rows = extractor.job_rows
        self.seen = {user: np.array([rows[j] for j in jobs if j in rows], dtype=np.int64)
                     for user, jobs in serving.seen.items()}
        # the seen pairs on jobs its catalog lacks (ids interned: one string a job): the live catalog may post
        # them later (``_seen_rows``)
        self.seen_elsewhere = {user: rest for user, jobs in serving.seen.items()
                               if (rest := [sys.intern(str(j)) for j in jobs if j not in rows])}
        if serving.popularity is not None:
            popular = serving.popularity.score(np.array(extractor.job_ids, dtype=object)).astype(np.float64)
        else:  # no serving.json: the model's own scores for a user it knows nothing about
            log.warning("%s: no %s.json; popularity fallback uses the unknown-user scores", loaded.path, SERVING_NAME)
            nobody = extractor.user_side(extractor.user_catalog.take([0]), np.array([""]))
            popular = torch.sigmoid(self.ranker.score_all(nobody)[0]).cpu().numpy()
        popular[0] = -np.inf
        self.popular = popular
        self.loaded_at = utc_now_text()
        self._time_lock = threading.Lock()  # ranking at request time moves the ranker's job sides
        # logged events (serve.events, set by ModelSlot); the history takes the types the model's was built from
        self.live: Optional["LiveEvents"] = None
        self._counted = 0  # events of ``live`` already counted in the jobs' popularity (``at``)
        self.event_mark = serving.event_log  # the event log's segments its data held: ``live`` may leave them out
        data_config = loaded.extra.get("data_config", {})
        self.positive_events = tuple(data_config.get("positive_events", DataConfig().positive_events))
        self.live_jobs = LiveJobs.of_model(self.n_jobs, data_config)  # live catalog on top (serve.live_catalog)
        self.retrieval_candidates = retrieval_candidates
        self.index = RetrievalIndex(self.ranker) if retrieval_candidates else None  # None: exact full scan
        self.cache = ScoreCache(self.ranker, score_cache_mib * 2**20 if self.index is None else 0)

    def expires(self, row: int, now: int) -> int:
        """Catalog row ``row``'s expiry as ``/recommend`` applies it at ``now`` (``NEVER``: none)."""
        live, model = int(self.live_jobs.expires[row]), self.model_jobs.expiry(row, now)
        return live if model is None else min(live, model)

    def expired(self, row: int, now: int) -> bool:
        """Whether catalog row ``row`` is out of ``/recommend`` at ``now``: past its live catalog expiry, or past
        the model's own at ``ModelJobs.time(now)``."""
        model = self.model_jobs.expiry(row, now)
        return int(self.live_jobs.expires[row]) <= now or (model is not None and model <= self.model_jobs.time(now))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", retrieval_candidates: int = 0,
             score_cache_mib: int = 0) -> "Scorer":
        """Load a model directory (ArtifactError if anything is missing, tampered or inconsistent), validate."""
        loaded = load_model_dir(path, device=device)
        payload = loaded.extra.get(SERVING_NAME)
        source = str(Path(path) / f"{SERVING_NAME}.json")
        serving = ServingData.empty() if payload is None else ServingData.from_payload(payload, source)
        scorer = cls(loaded, serving, retrieval_candidates, score_cache_mib)
        scorer.validate()
        return scorer

    def validate(self) -> None:
        """Refuse a model whose scores are not finite or whose fast path disagrees with its forward."""
        if self.n_jobs < 2:
            raise ArtifactError(f"{self.path}: the job catalog is empty")
        ids = np.arange(min(3, len(self.extractor.user_catalog)))
        users = self.extractor.user_side(self.extractor.user_catalog.take(ids),
                                         np.array(self.extractor.user_ids, dtype=object)[ids])
        rows = np.arange(min(64, self.n_jobs))
        fast, full = self.ranker.score_all(users, rows), self.ranker.full_scores(users, rows)
        everything = self.ranker.score_all(users.take([0]))  # the whole catalog, unknown user
        if not (torch.isfinite(fast).all() and torch.isfinite(everything).all()):
            raise ArtifactError(f"{self.path}: model produces non-finite scores (NaN/inf weights?)")
        gap = float((fast - full).abs().max())
        if gap > 1e-3:
            raise ArtifactError(f"{self.path}: fast ranking path differs from the model by {gap:.2e}")

    # ---------------------------------------------------------------------------------------- catalog
    def at(self, now: int) -> None:
        """Move the job sides to ``now`` (job ages, and popularity once the logged positives not counted yet
        are), the model's own jobs held at ``ModelJobs.time``, and the index with them. Callers hold
        ``_time_lock``."""
        self._count_logged()
        self.model_jobs.hold(now)
        (self.ranker if self.index is None else self.index).at(now)

    def follow_events(self, live: Optional["LiveEvents"]) -> None:
        """Read logged events from ``live`` from now on: the positives counted from another overlay are
        dropped from the jobs' popularity, and ``live``'s counted."""
        with self.live_jobs.lock, self._time_lock:  # as scoring takes them; a batch meanwhile runs in a thread
            if self._counted and self.extractor.popularity is not None:
                self.extractor.popularity.reset()
            self.live, self._counted = live, 0
            self._count_logged()  # here (a load's thread), not in the next request

    def _count_logged(self) -> None:
        """Count the positives ``live`` applied since the last count in the jobs' popularity."""
        if self.live is not None and self.extractor.popularity is not None:
            jobs, times, self._counted = self.live.applied_since(self._counted, self.positive_events)
            self.extractor.add_positives(jobs, times)

    def put_jobs(self, rows: np.ndarray) -> None:
        """Job sides (and index entries) of the extractor's catalog ``rows`` the live catalog appended or
        replaced (``serve.live_catalog``)."""
        self.ranker.put_jobs(rows)
        rows = np.asarray(rows, dtype=np.int64)
        self.model_jobs.replace(rows)  # the live catalog sets their expiry
        if self.index is not None:
            self.index.add(rows)

    # -------------------------------------------------------------------------------------------- helpers
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "path": public_text(str(self.path)),
                "loaded_at": self.loaded_at, "metrics": self.metrics, "jobs": self.n_jobs - 1,
                "open_jobs": self._open_count(),
                "catalog_version": self.live_jobs.version, "score_cache": self.cache.info(),
                "model_jobs_expire": self.model_jobs.expiry_applies(now_micros()),
                "model_time": self._model_time_text(),
                "users": len(self.extractor.user_catalog) - 1,
                "fields": [f.name for f in self.extractor.feature_map.fields],
                "extra_columns": getattr(self.extractor, "extra_columns", {})}

    def _open_count(self) -> int:
        """The catalog's jobs open now: those a request ranks (and scans, ``convfm.model.open_rows``)."""
        open_now = self._open(now_micros())
        return self.n_jobs - 1 if open_now is None else int(open_now[1:].sum())

    def _model_time_text(self) -> Optional[str]:
        """``ModelJobs.time`` as ISO text when it is not now (a replayed log: its data's end), else None."""
        now = now_micros()
        at = self.model_jobs.time(now)
        return None if at == now else micros_iso(at)

    def job_record(self, row: int) -> dict[str, Any]:
        record = {"job_id": self.extractor.job_ids[row]}
        record.update({c: values[row] for c, values in self.columns.items()})
        return record

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.extractor.job_rows.get(str(job_id))
        if row is None:
            raise ServiceError(404, f"unknown job id {job_id!r}")
        return self.job_record(row)

    def known_jobs(self, job_ids: Sequence[str]) -> dict[str, Optional[int]]:
        """Each job id's posting time (int64 microseconds, ``ALWAYS`` for none) when it is in this model's catalog,
        else None (events for other jobs are logged, flagged; an event before its job's posting is named)."""
        with self.live_jobs.lock:  # an apply registers a job's id before its times
            rows, recency = self.extractor.job_rows, self.ranker.recency
            posted = self.live_jobs.posted if recency is None else recency.posted
            return {j: int(posted[rows[j]]) if j in rows else None for j in job_ids}

    def _seen_rows(self, user_id: Optional[str]) -> list[int]:
        """Catalog rows of the jobs the user has interacted with: in the model's data (any user it holds pairs
        of, also one missing from its user catalog; a job the live catalog posted since included) and in the
        logged events (``live``)."""
        if user_id is None:
            return []
        rows = self.extractor.job_rows
        seen = self.seen.get(user_id, np.zeros(0, np.int64)).tolist()
        seen += [rows[j] for j in self.seen_elsewhere.get(user_id, ()) if j in rows]
        return seen + (self.live.seen_rows(user_id, rows) if self.live is not None else [])

    def _user(self, request: Any) -> tuple[bool, Optional[EncodedTable], np.ndarray]:
        """(known id?, user-side row, catalog rows of the user's past jobs, most recent first). A profile is
        encoded as given (cold start), a known id uses its catalog row, and the history is the request's or the
        stored one (the training data's positives, also of a user its user catalog lacks: one seen only after the
        training split) after the user's logged positive events (``serve.events``). An unknown id with neither
        profile nor history (given, stored or logged) has no row (popular fallback)."""
        extractor, user_id, history = self.extractor, request.user_id, request.history
        known = user_id is not None and user_id in extractor.user_rows
        length = max(extractor.history_length, 1)
        live = self.live.positives(user_id, self.positive_events, length) if self.live and not history else []
        start, count, _ = extractor.history.states(np.array([user_id or ""]), np.array([np.iinfo(np.int64).max]))
        stored = user_id is not None and bool(count[0])
        if request.profile is not None:
            profile = request.profile
            extra = profile_extra(extractor.extra_columns.get("users", {}), profile.extra)
            static = extractor.transform_users(pd.DataFrame({
                **extra, "user_id": [user_id or ""], "skills": [";".join(profile.skills)],
                "location": [profile.location or ""], "experience_level": [profile.experience_level or ""]}))
        elif known or history or live or stored:
            static = extractor.user_catalog.take([extractor.user_rows.get(user_id, 0)])
        else:
            return False, None, np.zeros(0, dtype=np.int64)
        recent = extractor.history.recent(start, count, length)  # (1, length) stored, most recent first
        if history or live:
            listed = history[::-1] if history else live + [j for j in recent[0] if j and j not in live]
            recent = np.array([(listed + [""] * length)[:length]], dtype=object)
            table = extractor.user_side(static, np.array([user_id or ""]), recent=recent)
        else:
            table = extractor.user_side(static, np.array([user_id or ""]))
        rows = [extractor.job_rows.get(j, 0) for j in recent[0] if j]
        return known, table, np.array(rows, dtype=np.int64)

    def _open(self, now: int) -> Optional[np.ndarray]:
        """(N,) bool of the catalog rows open at ``now`` (by the live catalog, or by the training data:
        ``ModelJobs.alive``); None when every row is."""
        return self.live_jobs.open_at(self.model_jobs.alive(now, len(self.extractor.job_ids)), now)

    def _mask(self, filters: Filters, open_now: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """(N,) bool of catalog rows passing every filter and, unless ``include_expired``, in ``open_now``
        (``_open``); None when every row passes."""
        mask = None
        for column in FILTER_COLUMNS:
            value = getattr(filters, column)
            if value is None:
                continue
            if column not in self.filter_values:
                raise ServiceError(422, f"filters.{column}: this model's jobs have no {column} column")
            hit = self.filter_values[column] == clean_value(value)
            mask = hit if mask is None else mask & hit
        if filters.salary_min is not None:
            if self.salary_top is None:
                raise ServiceError(422, "filters.salary_min: this model's jobs have no salary columns")
            with np.errstate(invalid="ignore"):
                hit = self.salary_top >= filters.salary_min
            mask = hit if mask is None else mask & hit
        if filters.include_expired or open_now is None:
            return mask
        return open_now if mask is None else mask & open_now

    # ---------------------------------------------------------------------------------------- recommend
    def recommend_many(self, requests: Sequence[RecommendRequest]) -> list[Any]:
        """One result dict (or ServiceError) per request; all model-scored users in one catalog pass."""
        results: list[Any] = [None] * len(requests)
        pending = []  # (request index, known, user row, past job rows, mask)
        open_now = self._open(now_micros())
        for i, request in enumerate(requests):
            try:
                known, user, past = self._user(request)
                mask = self._mask(request.filters, open_now)
            except ServiceError as exc:
                results[i] = exc
                continue
            if user is None:
                results[i] = self._popular(request, mask)
            else:
                pending.append((i, known, user, past, mask))
        if not pending:
            return results
        with self._time_lock:  # job ages at request time
            self.at(now_micros())
            exact = self.index is None
            # Every request's jobs are open ones, unless one asks for expired jobs too: then the whole catalog.
            expired_too = any(requests[p[0]].filters.include_expired for p in pending)
            rows = None if expired_too else rows_worth_a_view(open_now)
            scores = self.cache.scores(concat_rows([p[2] for p in pending]), rows) if exact else None  # (U, N)
            for u, (i, known, user, past, mask) in enumerate(pending):
                request = requests[i]
                seen = self._seen_rows(request.user_id) if request.exclude_seen else []
                if request.exclude_seen and request.history:  # all of it: ``past`` keeps the last history_length
                    seen += [self.extractor.job_rows.get(j, 0) for j in request.history]
                if exact:
                    rows, logits = self.ranker.top_k(user, request.k, seen, mask, scores=scores[u])
                else:  # seen jobs and filters leave the candidates before the scan: K of them pass
                    count = max(request.k, self.retrieval_candidates)
                    rows, logits = self.index.top_k(user, request.k, count, seen, mask)
                probabilities = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64)).tolist()  # no overflow
                items = [{**self.job_record(int(r)), "score": p} for r, p in zip(rows, probabilities)]
                if request.explain:
                    for item, e in zip(items, self.ranker.explainer.explain(user, rows, history_rows=past)):
                        item.update(why=why_line(self._cited(e)), explanation=e)
                results[i] = {"user_id": request.user_id, "model_version": self.version,
                              "cold_start": not known, "fallback": None, "items": items,
                              "unknown_history": self._unknown(request.history)}
        return results

    def _cited(self, explanation: dict[str, Any]) -> dict[str, Any]:
        """The explanation with its similar past job's title (None when the catalog has no titles)."""
        similar = explanation.get("similar_to")
        if similar is not None:
            row = self.extractor.job_rows.get(similar["job_id"])
            titles = self.columns.get("title")
            similar["title"] = titles[row] if titles is not None and row is not None else None
        return explanation

    def _unknown(self, job_ids: Optional[Sequence[str]]) -> list[str]:
        return [j for j in job_ids or () if j not in self.extractor.job_rows]

    def _popular(self, request: RecommendRequest, mask: Optional[np.ndarray]) -> dict[str, Any]:
        scores = self.popular if mask is None else np.where(mask, self.popular, -np.inf)
        seen = self._seen_rows(request.user_id) if request.exclude_seen else []
        if seen:
            scores = scores.copy()
            scores[seen] = -np.inf
        order = np.argsort(-scores, kind="stable")[: request.k]
        items = [{**self.job_record(int(r)), "score": float(scores[r]), "why": "popular with other users"}
                 for r in order if np.isfinite(scores[r])]
        return {"user_id": request.user_id, "model_version": self.version, "cold_start": False,
                "fallback": "popular", "items": items}

    # -------------------------------------------------------------------------------------------- score
    def score_many(self, requests: Sequence[ScoreRequest]) -> list[Any]:
        """Scores of the requested jobs in request order (None for unknown ids), all pairs in one pass."""
        job_rows = self.extractor.job_rows
        results: list[Any] = [None] * len(requests)
        users, user_index, pair_rows, spans = [], [], [], []
        for i, request in enumerate(requests):
            rows = [job_rows.get(j) for j in request.job_ids]
            known, user, _ = self._user(request)
            results[i] = {"user_id": request.user_id, "model_version": self.version,
                          "cold_start": not known and user is not None,
                          "fallback": None if user is not None else "popular",
                          "scores": [{"job_id": j, "score": None} for j in request.job_ids],
                          "unknown_job_ids": [j for j, r in zip(request.job_ids, rows) if r is None]}
            hits = [(slot, r) for slot, r in enumerate(rows) if r is not None]
            if user is None:
                for slot, r in hits:
                    results[i]["scores"][slot]["score"] = float(self.popular[r])
                continue
            start = len(pair_rows)
            user_index += [len(users)] * len(hits)
            pair_rows += [r for _, r in hits]
            users.append(user)
            spans.append((i, [slot for slot, _ in hits], start))
        if pair_rows:
            with self._time_lock:
                self.at(now_micros())
                logits = self.ranker.score_pairs(concat_rows(users), np.array(user_index), np.array(pair_rows))
            probabilities = torch.sigmoid(logits).cpu().numpy()
            for i, slots, start in spans:
                for offset, slot in enumerate(slots):
                    results[i]["scores"][slot]["score"] = float(probabilities[start + offset])
        return results


def _decoded_columns(extractor: Any) -> dict[str, list[Optional[str]]]:
    """Job categorical columns decoded from the encoded catalog (lower-cased vocabulary values)."""
    fields = extractor.feature_map.of_kind("categorical", "job")
    out = {}
    for i, field in enumerate(fields):
        column = DECODABLE.get(field.name)
        if column is not None:
            decode = extractor.vocabs[field.vocab].decode
            out[column] = [decode(x) for x in extractor.job_catalog.cat[:, i].tolist()]
    return out
