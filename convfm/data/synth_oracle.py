"""The synthetic market's truth: the probability that showing a job to a user at a time gets a positive event.

    p_positive = sigmoid(w . [skill Jaccard, same cluster, second cluster, location match, level gap,
                              salary fit, job popularity, user bias, freshness,
                              history cluster, history company, history location] + b)

freshness is ``exp(-age / freshness_days)`` of the job at the impression; the three history features are the
shares of the user's positives strictly before the impression at the job's cluster, company and location (0
without earlier positives). Positives feed the history of later impressions, so the generator walks history
positions in order, vectorised across users. ``b`` is bisected so the mean p_positive is the target rate.

``MarketOracle`` keeps the latent state and every user's positives (``oracle.npz``, plain arrays), so it gives
the exact p_positive of any (user, job, time), shown or not: the ceiling a ranking can reach.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from convfm.data.synth_time import EPOCH

# weights of [skill Jaccard, same cluster, second cluster, location, level gap, salary fit, popularity, bias]
STATIC_WEIGHTS = (5.0, 1.2, 0.6, 0.9, -0.7, 1.5, 0.35, 1.0)
FEATURES = ("skill_jaccard", "same_cluster", "second_cluster", "location", "level_gap", "salary_fit",
            "popularity", "user_bias", "freshness", "history_cluster", "history_company", "history_location")
HISTORY = ("cluster", "company", "loc")  # job attributes whose earlier positives make the history features
USER_KEYS = ("cluster", "second", "level", "home", "expect", "bias", "mask")
JOB_KEYS = ("cluster", "level", "loc", "company", "pay", "pop", "mask", "posted")
_EPOCH_US = int(EPOCH.astype("datetime64[us]").astype(np.int64))
_CELLS = 1 << 20  # (rows x candidates) scored at once


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def intercept_for(z: np.ndarray, rate: float) -> float:
    """The intercept ``b`` with mean(sigmoid(z + b)) = rate (bisection; on an even subsample of at most
    200k values, which moves the mean by far less than the draws do)."""
    z = z[::max(1, len(z) // 200_000)]
    lo, hi = -30.0, 30.0
    for _ in range(30):  # to 6e-8
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sigmoid(z + mid).mean() < rate else (lo, mid)
    return (lo + hi) / 2


def base_logit(users: dict[str, np.ndarray], jobs: dict[str, np.ndarray], weights: np.ndarray,
               freshness_days: float, remote: int, u: np.ndarray, j: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The logit without history and intercept of user ``u`` (M,) shown jobs ``j`` (M, W) at ``seconds`` (M,)
    since EPOCH -> (M, W); a job not yet posted counts as brand new. Term by term on (M, W) arrays, so scoring
    a whole catalog per user never builds an (M x W, features) matrix."""
    w = weights
    shared = np.bitwise_count(users["mask"][u][:, None, :] & jobs["mask"][j]).sum(axis=-1)  # (M, W)
    union = np.bitwise_count(users["mask"][u][:, None, :] | jobs["mask"][j]).sum(axis=-1)
    cluster, loc = jobs["cluster"][j], jobs["loc"][j]
    col = {k: users[k][u][:, None] for k in ("cluster", "second", "home", "level", "expect", "bias")}  # (M, 1)
    age_days = np.maximum(seconds[:, None] - jobs["posted"][j], 0) / 86_400.0
    z = w[0] * (shared / np.maximum(union, 1))
    z += w[1] * (cluster == col["cluster"])
    z += w[2] * (cluster == col["second"])
    z += w[3] * ((loc == col["home"]) | (loc == remote))
    z += w[4] * np.abs(jobs["level"][j] - col["level"])
    z += w[5] * np.clip(np.log(jobs["pay"][j] / col["expect"]), -1.0, 0.3)
    z += w[6] * jobs["pop"][j]
    z += w[7] * col["bias"]
    z += w[8] * np.exp(-age_days / freshness_days)
    return z


def simulate(users: dict[str, np.ndarray], jobs: dict[str, np.ndarray], weights: np.ndarray, freshness_days: float,
             remote: int, rate: float, u: np.ndarray, j: np.ndarray, seconds: np.ndarray,
             draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(p_positive (M,), positive (M,) bool, intercept) of impressions sorted by user then strictly increasing
    time; ``draws`` (M,) uniform: an impression is positive when its draw is below its p.

    The intercept is bisected on the logits without history, the walk run once to learn the history term,
    the intercept bisected again with it and the walk rerun: the mean p lands close to ``rate``."""
    base = base_logit(users, jobs, weights, freshness_days, remote, u, j[:, None], seconds)[:, 0]
    slots = [np.unique(u * (int(jobs[k].max()) + 2) + jobs[k][j] + 1, return_inverse=True)[1] for k in HISTORY]
    first = np.searchsorted(u, u)  # u is sorted: the row of each user's first impression
    order = np.argsort(np.arange(len(u)) - first, kind="stable")  # history position 0 of all users, then 1, ...
    bounds = np.r_[0, np.cumsum(np.bincount(np.arange(len(u)) - first))] if len(u) else np.zeros(1, np.int64)
    history_w = weights[9:12]

    def walk(b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = [np.zeros(int(s.max()) + 1 if len(s) else 0) for s in slots]
        prior = np.zeros(int(u.max()) + 1 if len(u) else 0)
        p, positive, history = np.empty(len(u)), np.zeros(len(u), bool), np.empty(len(u))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = order[lo:hi]  # one impression per user: slot updates never collide
            earlier = np.stack([c[s[rows]] for c, s in zip(counts, slots)], axis=1)  # (users at this position, 3)
            history[rows] = earlier @ history_w / np.maximum(prior[u[rows]], 1)
            p[rows] = sigmoid(base[rows] + history[rows] + b)
            positive[rows] = draws[rows] < p[rows]
            for c, s in zip(counts, slots):
                c[s[rows]] += positive[rows]
            prior[u[rows]] += positive[rows]
        return p, positive, history

    _, _, history = walk(intercept_for(base, rate))
    b = intercept_for(base + history, rate)
    p, positive, _ = walk(b)
    return p, positive, b


@dataclasses.dataclass(frozen=True, eq=False)
class MarketOracle:
    """The generator's latent state and every user's positives: exact p_positive for any (user, job, time).

    ``positive_offsets`` (U + 1,) delimit each user's rows of ``positive_jobs`` / ``positive_seconds`` (P,),
    sorted by time; seconds count from EPOCH (2024-01-01)."""

    user_ids: np.ndarray
    job_ids: np.ndarray
    users: dict[str, np.ndarray]
    jobs: dict[str, np.ndarray]
    weights: np.ndarray
    intercept: float
    freshness_days: float
    remote: int
    positive_offsets: np.ndarray
    positive_jobs: np.ndarray
    positive_seconds: np.ndarray

    def score(self, user_ids: np.ndarray, job_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """True p_positive of showing ``job_ids`` (U, W) to ``user_ids`` (U,) at ``times`` (U,) (int64
        microseconds since the Unix epoch), given each user's positives strictly before -> (U, W) float64."""
        job_ids = np.asarray(job_ids)
        u = _positions(self.user_ids, np.asarray(user_ids), "user")
        j = _positions(self.job_ids, job_ids.reshape(-1), "job").reshape(job_ids.shape)
        seconds = (np.asarray(times, dtype=np.int64) - _EPOCH_US) / 1e6
        if j.ndim != 2 or not len(u) == len(j) == len(seconds):
            raise ValueError(f"need user_ids (U,), job_ids (U, W) and times (U,); got shapes {u.shape}, "
                             f"{j.shape}, {seconds.shape}")
        out = np.empty(j.shape, dtype=np.float64)
        prior = self._count_before(u, seconds)
        step = max(1, min(_CELLS // max(j.shape[1], 1), _CELLS // (int(self.jobs["company"].max()) + 1)))
        for lo in range(0, len(u), step):
            part = slice(lo, lo + step)
            out[part] = self._score(u[part], j[part], seconds[part], prior[part])
        return out

    def _count_before(self, u: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """How many positives each user ``u`` (U,) had strictly before ``seconds`` (U,) -> (U,) int64: one
        sorted search over (user, time) keys (positive times are whole seconds, so ``< s`` is ``< ceil(s)``)."""
        if len(self.positive_seconds) == 0:
            return np.zeros(len(u), np.int64)
        low, high = int(self.positive_seconds.min()), int(self.positive_seconds.max())
        big = high - low + 3
        owner = np.repeat(np.arange(len(self.user_ids)), np.diff(self.positive_offsets))
        keys = owner * big + (self.positive_seconds - low + 1)
        query = np.clip(np.ceil(seconds) - low + 1, 0, big - 1).astype(np.int64)
        return np.searchsorted(keys, u * big + query, side="left") - self.positive_offsets[u]

    def _score(self, u: np.ndarray, j: np.ndarray, seconds: np.ndarray, prior: np.ndarray) -> np.ndarray:
        rows, width = j.shape
        base = base_logit(self.users, self.jobs, self.weights, self.freshness_days, self.remote, u, j, seconds)
        start = self.positive_offsets[u]
        row = np.repeat(np.arange(rows), prior)  # each row's earlier positives, flattened
        earlier = self.positive_jobs[np.repeat(start - (np.cumsum(prior) - prior), prior) + np.arange(len(row))]
        history = np.zeros((rows, width))
        for key, w in zip(HISTORY, self.weights[9:12]):
            size = int(self.jobs[key].max()) + 1
            counts = np.bincount(row * size + self.jobs[key][earlier], minlength=rows * size).reshape(rows, size)
            history += w * np.take_along_axis(counts, self.jobs[key][j], axis=1) / np.maximum(prior, 1)[:, None]
        return sigmoid(base + history + self.intercept)

    def save(self, path: Path) -> None:
        """Plain arrays (no pickle) in one .npz."""
        arrays = {f"user_{k}": v for k, v in self.users.items()} | {f"job_{k}": v for k, v in self.jobs.items()}
        np.savez_compressed(path, user_ids=self.user_ids.astype(str), job_ids=self.job_ids.astype(str),
                            weights=self.weights, scalars=np.array([self.intercept, self.freshness_days, self.remote]),
                            positive_offsets=self.positive_offsets, positive_jobs=self.positive_jobs,
                            positive_seconds=self.positive_seconds, **arrays)


def _positions(known: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``ids`` in ``known``; ValueError naming one unknown id and how many there are."""
    found = pd.Index(known).get_indexer(ids.astype(str))
    missing = found < 0
    if missing.any():
        raise ValueError(f"unknown {what} id {str(ids[np.argmax(missing)])!r} ({int(missing.sum())} unknown)")
    return found


def load_oracle(directory: str | Path) -> Optional[MarketOracle]:
    """The oracle of a written synthetic market; None when ``directory`` has no oracle.npz (real data)."""
    path = Path(directory) / "oracle.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        data: dict[str, Any] = {k: npz[k] for k in npz.files}
    intercept, freshness_days, remote = data["scalars"].tolist()
    return MarketOracle(
        user_ids=data["user_ids"], job_ids=data["job_ids"],
        users={k: data[f"user_{k}"] for k in USER_KEYS}, jobs={k: data[f"job_{k}"] for k in JOB_KEYS},
        weights=data["weights"], intercept=float(intercept), freshness_days=float(freshness_days),
        remote=int(remote), positive_offsets=data["positive_offsets"], positive_jobs=data["positive_jobs"],
        positive_seconds=data["positive_seconds"])
