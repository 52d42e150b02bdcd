"""Top-k jobs for many users at once, offline (the daily "jobs for you" email): ``CatalogRanker``'s fast path over
blocks of users, with each user's seen jobs and the jobs not live at the run's time left out. With
``retrieval_candidates`` K > 0, each user's K best candidates of a ``RetrievalIndex`` are ranked exactly instead
(catalogs too large to scan per user; the same semantics as ``ServeConfig.retrieval_candidates``).

Pure torch/pandas, so it is tested alone; ``batch/recommend.py`` runs it in Ray Data actors, one model per actor.
Seen jobs are the model's (``serving.json``) plus, through ``add_logged``, the service's logged events after those
its data held (``LogMark``). The catalog is the model's own plus, given a ``CatalogStore``, the live catalog's
deltas up to one pinned version, applied as the service applies them (``LiveJobs.apply``): new jobs are ranked
(popularity 0 in the fallback), upserted ones replace their rows, and a job is live at ``at`` when posted by then
and not expired, by its training-data window or through the live catalog. The index, when there is one, is built
after the deltas, so it holds them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from convfm.data.liveness import ALWAYS
from convfm.errors import ArtifactError
from convfm.features.fields import EncodedTable
from convfm.model.open_rows import rows_worth_a_view
from convfm.model.ranking import CatalogRanker
from convfm.model.retrieval import RetrievalIndex
from convfm.store.artifacts import LoadedModel, load_model_dir
from convfm.store.live_catalog import CatalogStore, grown
from convfm.store.live_jobs import LiveJobs
from convfm.store.registry import model_identity
from convfm.store.event_log import interactions_frame, list_segments
from convfm.store.log_mark import seen_segments
from convfm.store.serving_data import SERVING_NAME, ServingData

OUTPUT_COLUMNS = ("user_id", "rank", "job_id", "score", "source", "model_version", "catalog_version")
USERS_PER_BLOCK = 256  # a (256, 100k) float block is ~100 MB


class BatchRanker:
    """One loaded model and the exclusions of a batch run at time ``at`` (int64 microseconds; default now).

    ``catalog``: the live catalog whose deltas 1..``catalog_version`` (None: the latest now) are applied first;
    a run pins the version on its driver so every actor ranks the same catalog."""

    def __init__(self, loaded: LoadedModel, serving: ServingData, at: Optional[int] = None,
                 retrieval_candidates: int = 0, catalog: Optional[CatalogStore] = None,
                 catalog_version: Optional[int] = None) -> None:
        extractor = loaded.extractor
        if getattr(extractor, "kind", None) != "jobs" or extractor.job_catalog is None:
            raise ArtifactError(f"{loaded.path}: batch recommendations need a job-market model (JobFeatureExtractor)")
        self.extractor = extractor
        self.ranker = CatalogRanker(loaded.model, extractor, time=at)
        self.at = self.ranker.time
        self.model_version = model_identity(Path(loaded.path))[1]
        popular = (serving.popularity.score(np.array(extractor.job_ids, dtype=object)).astype(np.float64)
                   if serving.popularity is not None else None)
        self.live_jobs = LiveJobs.of_model(self.ranker.n_jobs, loaded.extra.get("data_config", {}))
        if catalog is not None:
            self.live_jobs.apply(catalog.read(upto=catalog_version), extractor, self.ranker.put_jobs)
        self.catalog_version = self.live_jobs.version
        self.job_ids = np.array(extractor.job_ids, dtype=object)  # (N,), aligned with the ranker's rows
        self.popular = None if popular is None else grown(popular, self.ranker.n_jobs, 0.0)  # new jobs: 0
        self.live = self._live_rows()
        rows = extractor.job_rows
        self.seen = {user: np.array([rows[j] for j in jobs if j in rows], dtype=np.int64)
                     for user, jobs in serving.seen.items()}
        self.event_mark = serving.event_log  # the event log's segments its seen pairs hold (``add_logged``)
        self.retrieval_candidates = retrieval_candidates
        self.index = RetrievalIndex(self.ranker) if retrieval_candidates else None  # None: exact full scan

    def add_seen(self, interactions: pd.DataFrame) -> int:
        """Count (user_id, job_id) pairs of ``interactions`` (e.g. the service's event log) before ``at`` as seen,
        as the service does for every logged event; returns how many pairs were added."""
        rows = self.extractor.job_rows
        before = interactions[interactions["timestamp"].to_numpy(np.int64) < self.at]
        added = 0
        for user, jobs in before.groupby("user_id")["job_id"]:
            new = np.array([rows[j] for j in jobs.astype(str) if j in rows], dtype=np.int64)
            self.seen[str(user)] = np.union1d(self.seen.get(str(user), np.zeros(0, np.int64)), new)
            added += len(new)
        return added

    def add_logged(self, log: str | Path) -> int:
        """``add_seen`` of the event log at ``log``: its segments after those the model's seen pairs hold
        (``convfm.store.log_mark.seen_segments``); returns how many pairs were added."""
        names = seen_segments(list_segments(log), self.event_mark)
        return self.add_seen(interactions_frame(log, names)) if names else 0

    @classmethod
    def load(cls, path: str | Path, at: Optional[int] = None, retrieval_candidates: int = 0,
             catalog: Optional[CatalogStore] = None, catalog_version: Optional[int] = None) -> "BatchRanker":
        """A local model directory (ArtifactError if anything is missing or inconsistent, or a delta up to
        ``catalog_version`` cannot be read)."""
        loaded = load_model_dir(path)
        payload = loaded.extra.get(SERVING_NAME)
        serving = ServingData.empty() if payload is None else ServingData.from_payload(
            payload, str(Path(path) / f"{SERVING_NAME}.json"))
        return cls(loaded, serving, at, retrieval_candidates, catalog, catalog_version)

    def _live_rows(self) -> np.ndarray:
        """(N,) bool: catalog rows live at ``at`` (posted, not expired, by the model's windows and the live
        catalog's); row 0, the unknown job, never."""
        recency = self.ranker.recency
        live = self.live_jobs.posted <= self.at
        if recency is not None:
            live &= ((recency.posted == ALWAYS) | (recency.posted <= self.at)) & (self.at < recency.expires)
        live = self.live_jobs.open_at(live, now=self.at)
        live[0] = False
        return live

    def recommend(self, user_ids: Sequence[str], k: int, exclude_seen: bool = True) -> pd.DataFrame:
        """OUTPUT_COLUMNS rows, k per user (fewer when fewer jobs are left), best first. Known users, and users
        its user catalog lacks with a stored history before ``at`` (seen only after the training split), are
        ranked by the model (``source`` "model", score a probability), as the service does; the others get the
        training split's popular jobs (``source`` "popular"), or no rows when the model has no popularity data."""
        ids = np.array([str(u) for u in user_ids], dtype=object)
        _, stored, _ = self.extractor.history.states(ids, np.full(len(ids), self.at, dtype=np.int64))
        known = np.array([u in self.extractor.user_rows for u in ids], dtype=bool) | (stored > 0)
        frames = [self._ranked(ids[known][a : a + USERS_PER_BLOCK], k, exclude_seen)
                  for a in range(0, int(known.sum()), USERS_PER_BLOCK)]
        if (~known).any() and self.popular is not None:
            frames.append(self._popular(ids[~known], k, exclude_seen))
        frames = [f for f in frames if len(f)]
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in zip(OUTPUT_COLUMNS, (object, np.int64, object, np.float64, object,
                                                                     object, np.int64))})
        out["model_version"], out["catalog_version"] = self.model_version, self.catalog_version
        return out[list(OUTPUT_COLUMNS)]

    def _ranked(self, ids: np.ndarray, k: int, exclude_seen: bool) -> pd.DataFrame:
        extractor = self.extractor
        static = extractor.user_catalog.take(np.array([extractor.user_rows.get(u, 0) for u in ids], dtype=np.int64))
        users = extractor.user_side(static, ids, times=np.full(len(ids), self.at, dtype=np.int64))  # history < at
        if self.index is not None:
            return self._retrieved(ids, users, k, exclude_seen)
        # Mostly closed catalogs (a live catalog's old jobs): the open rows alone, from the ranker's kept view.
        open_rows = rows_worth_a_view(self.live)
        scanned = np.arange(self.ranker.n_jobs) if open_rows is None else open_rows  # (M,)
        logits = self.ranker.score_all(users, open_rows, kept=True)  # (U, M), job ages at self.at
        blocked = np.repeat(~self.live[None], len(ids), axis=0)  # (U, N)
        if exclude_seen:
            for u, user in enumerate(ids):
                blocked[u, self.seen.get(user, ())] = True
        blocked = blocked[:, scanned]  # (U, M)
        logits = logits.masked_fill(torch.as_tensor(blocked, device=logits.device), -torch.inf)
        values, rows = torch.topk(logits, min(k, logits.shape[1]), dim=1)  # (U, k)
        keep = torch.isfinite(values).cpu().numpy()
        ranks = np.broadcast_to(np.arange(1, values.shape[1] + 1), keep.shape)
        users = np.broadcast_to(ids[:, None], keep.shape)
        return pd.DataFrame({"user_id": users[keep], "rank": ranks[keep].astype(np.int64),
                             "job_id": self.job_ids[scanned[rows.cpu().numpy()[keep]]],
                             "score": torch.sigmoid(values).cpu().numpy()[keep].astype(np.float64),
                             "source": "model"})

    def _retrieved(self, ids: np.ndarray, users: EncodedTable, k: int, exclude_seen: bool) -> pd.DataFrame:
        """``_ranked`` through the index: per user, its candidates among the live, unseen jobs, ranked exactly."""
        count, frames = max(k, self.retrieval_candidates), []
        for u, user in enumerate(ids):
            seen = self.seen.get(user, ()) if exclude_seen else ()
            rows, logits = self.index.top_k(users.take([u]), k, count, seen, self.live)  # (k,) each, best first
            scores = torch.sigmoid(torch.from_numpy(logits)).numpy().astype(np.float64)
            frames.append(pd.DataFrame({"user_id": np.full(len(rows), user, dtype=object),
                                        "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
                                        "job_id": self.job_ids[rows], "score": scores, "source": "model"}))
        return pd.concat(frames, ignore_index=True)

    def _popular(self, ids: np.ndarray, k: int, exclude_seen: bool) -> pd.DataFrame:
        """The popular live jobs, best first, k a user: one list, less each user's seen jobs (in the model's seen
        pairs or the log's: a user who only viewed or dismissed) with ``exclude_seen``."""
        scores = np.where(self.live, self.popular, -np.inf)
        seen = {u: self.seen[u] for u in ids if exclude_seen and len(self.seen.get(u, ()))}
        order = np.argsort(-scores, kind="stable")[: k + max(map(len, seen.values()), default=0)]
        order = order[np.isfinite(scores[order])]
        lists = [order[~np.isin(order, seen[u])][:k] if u in seen else order[:k] for u in ids]
        rows = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        return pd.DataFrame({"user_id": np.repeat(ids, [len(r) for r in lists]),
                             "rank": np.concatenate([np.arange(1, len(r) + 1, dtype=np.int64) for r in lists]
                                                    or [np.zeros(0, np.int64)]),
                             "job_id": self.job_ids[rows], "score": scores[rows], "source": "popular"})
