"""Live-catalog ranking protocol: each positive against every job live at its timestamp, beside baselines.

Notation: E evaluated events (one per positive: a user at a time t, not one per user, so time-dependent user
features fit later), N catalog jobs, e events in one chunk.

Candidates of an event: the catalog jobs live at t (``JobWindows.live``) minus every job the user interacted with
in any split (as the sampled protocol excludes seen jobs); the event's own job is ranked among them with the one
tie-fair rank of ``metrics.positive_ranks``. Events whose job is not in the catalog, is not live at t, or that
have no other live unseen job are skipped and counted. Each method scores the whole catalog per chunk of events
restricted to the M jobs live at any of the chunk's times (events are taken in time order, so M stays near the
live catalog's size, not the whole catalog's): (e, M); masking to live and unseen happens here, once for all
methods.

Top-k lists (coverage@k, mean age) are taken over the ranked set (candidates and the positive), best first,
ties broken by catalog order (a stable sort), so they are deterministic.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np
import pandas as pd

from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER, JobWindows
from convfm.evaluation.metrics import (
    PopularityBaseline,
    as_str_ids,
    excluded_pairs,
    lookup_ids,
    positive_ranks,
    rank_metrics,
)

CHUNK_ELEMENTS = 1 << 22  # events x catalog floats per scored chunk: ~32 MB of float64 per method
RECENT_DAYS = 7.0
SKIP_REASONS = ("not_in_catalog", "not_live", "no_candidates")

# A method: (user ids (e,), times (e,) int64 us, catalog codes (M,)) -> scores (e, M) of those jobs, higher is
# better.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class LiveEvents(NamedTuple):
    """The evaluated events and what each must not rank.

    users, times (int64 us), codes (catalog position of the positive): (E,). excluded_rows/excluded_codes:
    sorted unique (event, catalog code) pairs of the user's seen jobs and the positive. skipped: count per
    ``SKIP_REASONS``. positives: positives in the split before skipping and sampling.
    """

    users: np.ndarray
    times: np.ndarray
    codes: np.ndarray
    excluded_rows: np.ndarray
    excluded_codes: np.ndarray
    skipped: dict[str, int]
    positives: int


def catalog_windows(catalog: np.ndarray, windows: Optional[JobWindows]) -> JobWindows:
    """``windows``, or every job live forever when the data has no calendar (rank the whole catalog)."""
    if windows is not None:
        if len(windows.job_ids) != len(catalog):
            raise ValueError(f"windows cover {len(windows.job_ids)} jobs, the catalog {len(catalog)}")
        return windows
    n = len(catalog)
    return JobWindows(np.asarray(catalog), np.full(n, ALWAYS, np.int64), np.full(n, NEVER, np.int64))


def select_events(
    frame: pd.DataFrame, seen: pd.DataFrame, catalog: np.ndarray, windows: JobWindows, max_events: int, seed: int
) -> LiveEvents:
    """The split's positives (label > 0) that can be ranked, at most ``max_events`` (a seeded sample), in time
    order; ``seen`` holds (user_id, job_id) pairs of every split."""
    positives = frame[frame["label"] > 0]
    index = pd.Index(as_str_ids(np.asarray(catalog)))
    codes = lookup_ids(index, positives["job_id"])
    times = positives["timestamp"].to_numpy(np.int64)
    in_catalog = codes >= 0
    live = np.zeros(len(codes), dtype=bool)
    live[in_catalog] = windows.live(times[in_catalog], codes[in_catalog, None])[:, 0]
    kept = positives[live]
    rows, excluded = excluded_pairs(kept, seen, index)
    live_excluded = windows.live(times[live][rows], excluded[:, None])[:, 0]
    available = windows.live_count(times[live]) - np.bincount(rows[live_excluded], minlength=len(kept))
    ranked = kept[available > 0]
    if len(ranked) > max_events:
        chosen = np.sort(np.random.default_rng(seed).choice(len(ranked), max_events, replace=False))
        ranked = ranked.iloc[chosen]
    ranked = ranked.sort_values("timestamp", kind="stable")
    rows, excluded = excluded_pairs(ranked, seen, index)
    skipped = {"not_in_catalog": int((~in_catalog).sum()), "not_live": int((in_catalog & ~live).sum()),
               "no_candidates": int((available <= 0).sum())}
    return LiveEvents(ranked["user_id"].to_numpy(), ranked["timestamp"].to_numpy(np.int64),
                      lookup_ids(index, ranked["job_id"]), rows, excluded, skipped, len(positives))


def _candidates(events: LiveEvents, live: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``live`` (e, N) of events start..stop with their excluded jobs (seen, the positive) removed -> (e, N)."""
    mask = live.copy()
    lo, hi = np.searchsorted(events.excluded_rows, [start, stop])
    mask[events.excluded_rows[lo:hi] - start, events.excluded_codes[lo:hi]] = False
    return mask


def _top_k(scores: np.ndarray, ranked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (e, k), valid (e, k)) of the best ``k`` ranked jobs per row, ties in catalog order."""
    order = np.argsort(np.where(ranked, -scores, np.inf), axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(ranked, order, axis=1)


def evaluate_live(
    events: LiveEvents, windows: JobWindows, scorers: Mapping[str, Scorer], k: int = 10
) -> dict[str, dict[str, Any]]:
    """Per method: hr@k, ndcg@k, mrr, coverage@k (distinct top-k jobs / jobs live at any event time), mean age
    in days of its top-k jobs at t (jobs without posted_at left out; NaN when none has one) and ``events``."""
    n_events, n_jobs = len(events.times), len(windows.job_ids)
    ranks = {name: np.empty(n_events) for name in scorers}
    shown = {name: np.zeros(n_jobs, dtype=bool) for name in scorers}
    age = {name: [0.0, 0] for name in scorers}
    live_any = np.zeros(n_jobs, dtype=bool)
    step = max(1, CHUNK_ELEMENTS // max(1, n_jobs))
    for start in range(0, n_events, step):
        stop = min(start + step, n_events)
        rows, times = np.arange(stop - start), events.times[start:stop]
        live = windows.live(times)  # (e, N)
        columns = np.flatnonzero(live.any(axis=0))  # (M,) catalog codes live at some time of the chunk
        live_any[columns] = True
        codes = np.searchsorted(columns, events.codes[start:stop])  # (e,) the positives, as columns
        candidates = _candidates(events, live, start, stop)[:, columns]  # (e, M)
        ranked = candidates.copy()
        ranked[rows, codes] = True
        for name, scorer in scorers.items():
            scores = np.asarray(scorer(events.users[start:stop], times, columns), dtype=np.float64)  # (e, M)
            if scores.shape != candidates.shape:
                raise ValueError(f"{name}: scores of shape {scores.shape}, expected {candidates.shape}")
            with_positive = np.concatenate([scores[rows, codes][:, None], scores], axis=1)  # (e, 1+M)
            mask = np.concatenate([np.ones((len(rows), 1), dtype=bool), candidates], axis=1)
            ranks[name][start:stop] = positive_ranks(with_positive, mask)
            top, valid = _top_k(scores, ranked, k)  # (e, k) columns
            shown[name][columns[top[valid]]] = True
            ages = windows.age_days(times, columns[top])[valid]
            ages = ages[~np.isnan(ages)]
            age[name][0] += float(ages.sum())
            age[name][1] += ages.size
    out = {}
    for name in scorers:
        total, count = age[name]
        out[name] = {**rank_metrics(ranks[name], k), f"coverage@{k}": float(shown[name].sum() / max(1, live_any.sum())),
                     "mean_age_days": total / count if count else float("nan"), "events": n_events}
    return out


def mean_live_jobs(events: LiveEvents, windows: JobWindows) -> float:
    """Mean number of catalog jobs live at the evaluated events' times."""
    return float(windows.live_count(events.times).mean()) if len(events.times) else float("nan")


# --------------------------------------------------------------------------------------------- baselines


def popularity_scorer(baseline: PopularityBaseline, catalog: np.ndarray) -> Scorer:
    """All-time popularity (fitted on train), the same row for every event."""
    row = baseline.score(np.asarray(catalog))  # (N,)
    return lambda users, times, codes: np.broadcast_to(row[codes], (len(times), len(codes)))


def recent_popularity_scorer(positives: pd.DataFrame, catalog: np.ndarray, days: float = RECENT_DAYS) -> Scorer:
    """Positives per job in the ``days`` before t: [t - days, t), from ``positives`` (job_id, timestamp) of
    every split (only what was known before t)."""
    codes = lookup_ids(pd.Index(as_str_ids(np.asarray(catalog))), positives["job_id"])
    stamps = positives["timestamp"].to_numpy(np.int64)[codes >= 0]
    order = np.argsort(stamps, kind="stable")
    stamps, codes = stamps[order], codes[codes >= 0][order]
    width, size = np.int64(round(days * MICROS_PER_DAY)), len(catalog)

    def score(users: np.ndarray, times: np.ndarray, columns: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(stamps, np.asarray(times, np.int64) - width, side="left")
        hi = np.searchsorted(stamps, times, side="left")
        counts = [np.bincount(codes[a:b], minlength=size)[columns] for a, b in zip(lo, hi)]
        return np.stack(counts).astype(np.float64) if counts else np.zeros((0, len(columns)))

    return score


def newest_scorer(windows: JobWindows) -> Scorer:
    """Newest first: the score is ``posted_at`` (jobs without one, ``ALWAYS``, rank as the oldest)."""
    row = windows.start.astype(np.float64)  # microseconds < 2**53: exact
    return lambda users, times, codes: np.broadcast_to(row[codes], (len(times), len(codes)))


def oracle_scorer(oracle: Any, catalog: np.ndarray) -> Scorer:
    """The generator's true probabilities (``PreparedData.oracle.score``) of every catalog job."""
    ids = np.asarray(catalog)
    return lambda users, times, codes: oracle.score(
        np.asarray(users), np.broadcast_to(ids[codes], (len(users), len(codes))), np.asarray(times, np.int64))
