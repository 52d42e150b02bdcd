"""The timeline of the synthetic market (``convfm.data.synth``): when jobs live, when users act, what they see.

Jobs are posted at a steady rate from one median lifetime before the timeline starts until it ends, each live
for a log-normal lifetime (``posted_at <= t < expires_at``). Users arrive over the timeline; how many
impressions each gets follows a log-normal activity (most histories are short, a few users are very active),
spaced by exponential gaps. An impression at time ``t`` shows a job live at ``t`` drawn with weight
``popularity x exp(-age / exposure_decay_days)``: feeds favour fresh jobs, which is why what users act on next
is mostly new. Times are whole seconds since ``EPOCH``, strictly increasing per user (so "before t" is exact).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from convfm.validate import check_int, check_number

EPOCH = np.datetime64("2024-01-01T00:00:00", "s")
DAY = 86_400  # seconds
_REDRAWS = 30  # rounds of redrawing an expired or repeated pick before the impression is dropped


@dataclasses.dataclass(frozen=True)
class MarketShape:
    """The knobs of the market's time and behaviour (sizes and seed are ``generate_market``'s arguments).

    Defaults give a market like a real job-view log: short histories with a long tail and exposure to fresh
    jobs. A smaller ``activity_sigma`` gives longer, more even histories; zero ``history_*`` weights and
    ``freshness_weight`` give a truth that ignores time."""

    weeks: int = 12  # length of the timeline
    job_lifetime_days: float = 30.0  # median time from posted_at to expires_at
    lifetime_sigma: float = 0.5  # log-normal spread of lifetimes
    activity_sigma: float = 1.6  # log-normal spread of user activity: larger, more short histories
    gap_days: float = 1.0  # mean time between a user's consecutive impressions
    exposure_decay_days: float = 3.0  # impressions favour jobs younger than this (exp(-age / it))
    freshness_weight: float = 1.0  # truth: weight of exp(-age / freshness_days)
    freshness_days: float = 7.0
    history_cluster: float = 0.8  # truth: weight of the share of the user's earlier positives in the job's cluster
    history_company: float = 1.5  # ... at the job's company
    history_location: float = 0.6  # ... in the job's location
    positive_rate: float = 0.22  # target mean p_positive (the intercept is bisected to it)

    def __post_init__(self) -> None:
        check_int(self.weeks, "weeks", 1, 520)
        for name in ("job_lifetime_days", "gap_days", "exposure_decay_days", "freshness_days"):
            check_number(getattr(self, name), name, 0.01, 3650.0)
        for name in ("lifetime_sigma", "activity_sigma"):
            check_number(getattr(self, name), name, 0.0, 4.0)
        for name in ("freshness_weight", "history_cluster", "history_company", "history_location"):
            check_number(getattr(self, name), name, -10.0, 10.0)
        check_number(self.positive_rate, "positive_rate", 0.0, 1.0, low_open=True, high_open=True)

    @property
    def seconds(self) -> int:
        return self.weeks * 7 * DAY

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def job_windows_seconds(rng: np.random.Generator, n: int, shape: MarketShape) -> tuple[np.ndarray, np.ndarray]:
    """(posted, expires) (n,) int64 seconds since EPOCH: a steady flow of postings, so the live catalog is
    about the same size from the first day to the last."""
    lead = shape.job_lifetime_days * DAY
    posted = np.floor(rng.uniform(-lead, shape.seconds, n)).astype(np.int64)
    lifetime = shape.job_lifetime_days * DAY * rng.lognormal(0.0, shape.lifetime_sigma, n)
    return posted, posted + np.maximum(np.round(lifetime), 3600).astype(np.int64)


def history_counts(rng: np.random.Generator, activity: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Impressions per user (U,): at least one each, the rest shared by ``activity``, at most ``cap`` each
    (what a user cannot take goes to the others, so the total is kept where the cap allows)."""
    n = len(activity)
    if total < n:
        return np.bincount(rng.choice(n, total, replace=False, p=activity / activity.sum()), minlength=n)
    counts = np.ones(n, np.int64)
    left = total - n
    for _ in range(8):
        room = cap - counts
        if left <= 0 or not (room > 0).any():
            break
        share = np.where(room > 0, activity, 0.0)
        counts += np.minimum(rng.multinomial(left, share / share.sum()), room)
        left = total - int(counts.sum())
    return counts


def user_times(rng: np.random.Generator, counts: np.ndarray, shape: MarketShape) -> tuple[np.ndarray, np.ndarray]:
    """(user index, seconds since EPOCH) per impression, sorted by user then time, strictly increasing per user.

    A user's impressions are spaced by exponential gaps (mean ``gap_days``) and start at a uniform arrival
    time that leaves room for them; a history longer than the timeline is squeezed into it."""
    n_users = len(counts)
    u = np.repeat(np.arange(n_users), counts)
    first = np.cumsum(counts) - counts
    gaps = rng.exponential(shape.gap_days * DAY, len(u))
    gaps[first[counts > 0]] = 0.0
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[np.minimum(first, max(len(u) - 1, 0))], counts)  # per-user running time
    span = np.zeros(n_users)
    last = first + counts - 1
    span[counts > 0] = offset[last[counts > 0]]
    squeeze = np.where(span > shape.seconds, (shape.seconds - 1) / np.maximum(span, 1.0), 1.0)
    start = rng.random(n_users) * np.maximum(shape.seconds - 1 - span * squeeze, 0.0)
    seconds = np.floor(start[u] + offset * squeeze[u]).astype(np.int64)
    position = np.arange(len(u)) - first[u]
    big = np.int64(4 * shape.seconds + 2 * len(u) + 10)  # a user's keys all sit above the previous user's
    key = np.maximum.accumulate(seconds - position + u * big)
    return u, key - u * big + position


class FreshSampler:
    """Draws, per (group, time), a job of that group live at that time with weight
    ``weight x exp(-(t - posted) / decay)``.

    The freshness factor is ``exp(-t / decay) x exp(posted / decay)``: the first part is the same for every
    job at one draw, so a draw is an inverse-CDF lookup in a per-group running log-sum of
    ``log(weight) + posted / decay`` over the jobs posted by ``t``, exact and overflow-free. Jobs that have
    expired by ``t`` are redrawn (their weight is tiny after a few decays, so redraws are rare)."""

    def __init__(self, groups: np.ndarray, n_groups: int, posted: np.ndarray, expires: np.ndarray,
                 weight: np.ndarray, decay_seconds: float) -> None:
        self.expires = expires
        self.index, self.posted, self.logcum = [], [], []
        order = np.lexsort((posted, groups))
        ends = np.cumsum(np.bincount(groups, minlength=n_groups))
        for g in range(n_groups):
            jobs = order[(ends[g - 1] if g else 0):ends[g]]
            self.index.append(jobs)
            self.posted.append(posted[jobs])
            self.logcum.append(np.logaddexp.accumulate(np.log(weight[jobs]) + posted[jobs] / decay_seconds))

    def draw(self, rng: np.random.Generator, groups: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Job index (M,) live at ``times`` (M,) in ``groups`` (M,); -1 where none could be drawn."""
        out = np.full(len(times), -1, np.int64)
        todo = np.arange(len(times))
        for _ in range(_REDRAWS):
            if len(todo) == 0:
                break
            out[todo] = self._propose(rng, groups[todo], times[todo])
            picked = out[todo]
            todo = todo[(picked >= 0) & (self.expires[np.maximum(picked, 0)] <= times[todo])]
        out[todo] = -1
        return out

    def _propose(self, rng: np.random.Generator, groups: np.ndarray, times: np.ndarray) -> np.ndarray:
        out = np.full(len(times), -1, np.int64)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            k = np.searchsorted(self.posted[g], times[rows], side="right")  # jobs posted by t
            rows, k = rows[k > 0], k[k > 0]
            target = np.log(rng.random(len(rows))) + self.logcum[g][k - 1]
            at = np.minimum(np.searchsorted(self.logcum[g], target, side="right"), k - 1)
            out[rows] = self.index[g][at]
        return out


def impressions(rng: np.random.Generator, user: dict[str, Any], job: dict[str, Any], total: int,
                shape: MarketShape, n_clusters: int, n_locations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, job index, seconds since EPOCH) per impression: unique per (user, job), time-ordered per
    user, every job live at its impression. Targeting as in a job feed: 45% the user's cluster, 15% their
    second cluster (else the main one), 12% their home location, the rest anything."""
    n_jobs = len(job["cluster"])
    counts = history_counts(rng, user["activity"], total, max(1, n_jobs // 2))
    u, t = user_times(rng, counts, shape)
    decay = shape.exposure_decay_days * DAY
    sample = {name: FreshSampler(groups, n, job["posted"], job["expires"], job["weight"], decay)
              for name, groups, n in (("cluster", job["cluster"], n_clusters), ("location", job["loc"], n_locations),
                                      ("any", np.zeros(n_jobs, np.int64), 1))}
    r = rng.random(len(u))
    second = np.where(user["second"][u] >= 0, user["second"][u], user["cluster"][u])
    j = np.full(len(u), -1, np.int64)
    for rows, name, groups in ((r < 0.45, "cluster", user["cluster"][u]), ((r >= 0.45) & (r < 0.6), "cluster", second),
                               ((r >= 0.6) & (r < 0.72), "location", user["home"][u]), (r >= 0.72, "any", None)):
        rows = np.flatnonzero(rows)
        j[rows] = sample[name].draw(rng, np.zeros(len(rows), np.int64) if groups is None else groups[rows], t[rows])
    for _ in range(_REDRAWS):  # an empty group or a repeated (user, job) pair: draw again from every live job
        redo = np.ones(len(u), dtype=bool)
        redo[np.unique(u * (n_jobs + 1) + j + 1, return_index=True)[1]] = False
        redo |= j < 0
        if not redo.any():
            break
        rows = np.flatnonzero(redo)
        j[rows] = sample["any"].draw(rng, np.zeros(len(rows), np.int64), t[rows])
    keep = np.zeros(len(u), dtype=bool)
    keep[np.unique(u * (n_jobs + 1) + j + 1, return_index=True)[1]] = True
    keep &= j >= 0
    return u[keep], j[keep], t[keep]
