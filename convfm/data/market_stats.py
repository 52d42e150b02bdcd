"""How a job market unfolds in time, from its tables alone (synthetic or a real log): ``convfm data stats``.

The numbers say how hard "what will this user act on next" is: short histories leave little to learn per
user, and when most positives late in the log are on jobs posted late, a model that only knows popular old
jobs loses to one that can rank new ones. A job's posting time is its ``posted_at``, or its first interaction
when the jobs table has none.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from convfm.data.liveness import ALWAYS, MICROS_PER_DAY, NEVER, job_windows, to_micros

DEFAULT_POSITIVE_EVENTS = ("apply", "save")
FRESH_DAYS = 13  # the horizon of "positives within N days of posting"
# key -> label, in the order the table prints them
LABELS = {
    "users": "users",
    "jobs": "jobs",
    "interactions": "interactions",
    "positives": "positives",
    "timeline_days": "timeline (days)",
    "interactions_per_user_mean": "interactions per user, mean",
    "interactions_per_user_median": "interactions per user, median",
    "interactions_per_job_mean": "interactions per job (with any), mean",
    "interactions_per_job_median": "interactions per job (with any), median",
    "last_tenth_new_job_share": "last-tenth positives on jobs posted in it",
    "cold_last_positive_share": "users' last positive on a job nobody saw before",
    "positives_within_13_days": f"positives within {FRESH_DAYS} days of posting",
    "mean_live_catalog": "live jobs at an interaction, mean",
}


def market_stats(jobs: pd.DataFrame, interactions: pd.DataFrame,
                 positive_events: Sequence[str] = DEFAULT_POSITIVE_EVENTS,
                 default_lifetime_days: Optional[float] = 30.0) -> dict[str, Any]:
    """The statistics in ``LABELS`` of ``jobs`` (job_id, optional posted_at / expires_at) and ``interactions``
    (user_id, job_id, event, timestamp: date/time strings, datetimes or int64 microseconds since the epoch).

    The last tenth is the final 10% of the span of interaction times; "before" is strictly earlier."""
    t = _micros(interactions["timestamp"])  # (I,)
    n_listed = len(jobs)
    codes, job_ids = pd.factorize(pd.concat([jobs["job_id"], interactions["job_id"]], ignore_index=True))
    listed, code = codes[:n_listed], codes[n_listed:]  # (J,), (I,): positions in the catalog job_ids
    first_seen = np.full(len(job_ids), NEVER, np.int64)
    np.minimum.at(first_seen, code, t)
    posted = np.full(len(job_ids), ALWAYS, np.int64)
    if "posted_at" in jobs:
        posted[listed] = _micros(jobs["posted_at"])
    posted = np.where(posted == ALWAYS, np.where(first_seen == NEVER, ALWAYS, first_seen), posted)
    catalog = pd.DataFrame({"job_id": job_ids, "posted_at": _datetimes(posted)})
    if "expires_at" in jobs:
        expires = np.full(len(job_ids), ALWAYS, np.int64)
        expires[listed] = _micros(jobs["expires_at"])
        catalog["expires_at"] = _datetimes(expires)
    windows = job_windows(catalog, default_lifetime_days)
    job_posted = windows.start[code]  # (I,)

    positive = (interactions["event"].isin(list(positive_events)).to_numpy() if "event" in interactions
                else np.ones(len(t), bool))
    user = pd.factorize(interactions["user_id"])[0]
    per_user = np.bincount(user)
    per_job = np.bincount(code)
    per_job = per_job[per_job > 0]
    low, high = (int(t.min()), int(t.max())) if len(t) else (0, 0)
    cutoff = low + 0.9 * (high - low)
    late = positive & (t >= cutoff)
    return {
        "users": int(len(per_user)),
        "jobs": int(len(job_ids)),
        "interactions": int(len(interactions)),
        "positives": int(positive.sum()),
        "timeline_days": round((high - low) / MICROS_PER_DAY, 3),
        "interactions_per_user_mean": _round(np.mean(per_user)),
        "interactions_per_user_median": _round(np.median(per_user)),
        "interactions_per_job_mean": _round(np.mean(per_job)),
        "interactions_per_job_median": _round(np.median(per_job)),
        "last_tenth_new_job_share": _share(job_posted[late] >= cutoff),
        "cold_last_positive_share": _cold_last_positive(user[positive], code[positive], t[positive], first_seen),
        "positives_within_13_days": _share((t - job_posted)[positive & (job_posted != ALWAYS)]
                                           < FRESH_DAYS * MICROS_PER_DAY),
        "mean_live_catalog": _round(windows.live_count(t).mean() if len(t) else float("nan")),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """An aligned two-column table of ``stats`` (shares as percentages)."""
    width = max(len(label) for label in LABELS.values())
    lines = []
    for key, label in LABELS.items():
        value = stats.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            shown = "n/a"
        elif key.endswith("_share") or key.startswith("positives_within"):
            shown = f"{100 * value:.1f}%"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = f"{value:,.2f}"
        lines.append(f"{label:<{width}}  {shown:>10}")
    return "\n".join(lines)


def _micros(values: pd.Series) -> np.ndarray:
    """int64 microseconds of date/time strings or datetimes (ALWAYS where missing); integers as given."""
    if values.dtype.kind in "iu":
        return values.to_numpy(np.int64)
    return to_micros(values)


def _datetimes(micros: np.ndarray) -> pd.Series:
    """int64 microseconds (ALWAYS: missing) -> datetimes with NaT."""
    return pd.Series(micros.astype("datetime64[us]")).where(micros != ALWAYS)


def _cold_last_positive(user: np.ndarray, job: np.ndarray, t: np.ndarray, first_seen: np.ndarray) -> Optional[float]:
    """Share of users whose last positive (user, job, t: (P,) each) is on a job with no interaction, by anyone,
    strictly before it."""
    if len(t) == 0:
        return None
    order = np.lexsort((t, user))
    last = order[np.r_[user[order][1:] != user[order][:-1], True]]  # each user's latest positive
    return _share(first_seen[job[last]] >= t[last])


def _share(mask: np.ndarray) -> Optional[float]:
    return round(float(np.mean(mask)), 4) if len(mask) else None


def _round(value: float) -> float:
    return round(float(value), 3)
