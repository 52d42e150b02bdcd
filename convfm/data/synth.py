"""A synthetic job market that unfolds in time, with a known ground truth (``convfm data synth``).

Jobs belong to one of ~20 skill clusters; titles and descriptions are built from the cluster, the seniority and
skills, and every description names in prose one or more cluster skills that the ``skills`` column leaves out.
Users have latent preferences (main and maybe a secondary cluster, true skills, home, level, salary
expectation, activity, bias); ``users.csv`` holds a noisy view of them. Jobs are posted throughout the
timeline and expire (``posted_at``, ``expires_at``); users arrive over it and see live jobs, fresh ones most
(``convfm.data.synth_time``). Each impression is positive (apply:save ~ 3:1; else view/click/dismiss) with the
probability of ``convfm.data.synth_oracle``: profile fit, freshness and the user's own earlier positives.
``truth.csv`` holds p_positive per (user_id, job_id), ``oracle.npz`` the state that scores any (user, job,
time). Fully vectorised and deterministic for a seed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from convfm.data.market_stats import market_stats
from convfm.data.readers import SUFFIXES, read_frame
from convfm.data.synth_oracle import (  # noqa: F401  (load_oracle: re-exported)
    FEATURES, JOB_KEYS, STATIC_WEIGHTS, USER_KEYS, MarketOracle, load_oracle, simulate,
)
from convfm.data.synth_time import EPOCH, MarketShape, impressions, job_windows_seconds  # noqa: F401
from convfm.data.synth_vocab import CLUSTERS, COMPANY_PREFIXES, COMPANY_SUFFIXES, LOCATIONS, REMOTE
from convfm.jsonfile import write_json_atomic
from convfm.validate import check_int

GENERATOR_VERSION = "2.0"
LEVELS = ("entry", "mid", "senior", "lead")
JOB_TYPES = ("full_time", "part_time", "contract", "internship")
_LEVEL_PAY = np.array([0.7, 1.0, 1.3, 1.6])
_TYPE_PAY = np.array([1.0, 0.55, 1.1, 0.4])
_TITLE_PREFIX = ("Junior ", "", "Senior ", "Lead ")
_CLOSING = ("This is a full-time {level}-level role.", "This is a part-time {level}-level role.",
            "This is a {level}-level contract role.", "This is a paid internship.")


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticMarket:
    """Generated tables (canonical columns), the truth (user_id, job_id, p_positive), the oracle, meta facts."""

    jobs: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    truth: pd.DataFrame
    meta: dict[str, Any]
    oracle: MarketOracle


def _vocabulary() -> tuple[list[str], np.ndarray]:
    """All skill names (first-seen order) and a (clusters, max skills) index matrix padded with -1."""
    names = list(dict.fromkeys(s for c in CLUSTERS for s in c.skills))
    index = {s: i for i, s in enumerate(names)}
    table = np.full((len(CLUSTERS), max(len(c.skills) for c in CLUSTERS)), -1, dtype=np.int64)
    for k, cluster in enumerate(CLUSTERS):
        table[k, :len(cluster.skills)] = [index[s] for s in cluster.skills]
    return names, table


def _pick(rng: np.random.Generator, table: np.ndarray, groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row, ``counts`` distinct random skills of cluster ``groups``, left-aligned and padded with -1."""
    skills = table[groups]
    keys = rng.random(skills.shape)
    keys[skills < 0] = np.inf
    shuffled = np.take_along_axis(skills, np.argsort(keys, axis=1), axis=1)
    return np.where(np.arange(skills.shape[1])[None, :] < counts[:, None], shuffled, -1)


def _bitmask(indices: np.ndarray, n_words: int) -> np.ndarray:
    masks = np.zeros((indices.shape[0], n_words), dtype=np.uint64)
    rows, cols = np.nonzero(indices >= 0)
    values = indices[rows, cols]
    np.bitwise_or.at(masks, (rows, values // 64), np.left_shift(np.uint64(1), (values % 64).astype(np.uint64)))
    return masks


def _join(indices: np.ndarray, names: list[str]) -> list[str]:
    return [";".join(dict.fromkeys(names[i] for i in row if i >= 0)) for row in indices.tolist()]


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(6, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _iso(seconds: np.ndarray) -> np.ndarray:
    """Seconds since EPOCH -> "YYYY-MM-DDTHH:MM:SS" strings."""
    return np.datetime_as_string(EPOCH + seconds.astype("timedelta64[s]"), unit="s")


def generate_market(users: int, jobs: int, interactions: int, seed: int = 0,
                    shape: MarketShape = MarketShape()) -> SyntheticMarket:
    """Generate a market of ``users`` users, ``jobs`` jobs and about ``interactions`` unique impressions
    (fewer when the live catalog cannot give a user that many distinct jobs) over ``shape``'s timeline."""
    for name, value, low in (("users", users, 1), ("jobs", jobs, 2), ("interactions", interactions, 1),
                             ("seed", seed, 0)):
        check_int(value, name, low)
    if not isinstance(shape, MarketShape):
        raise TypeError(f"shape must be a MarketShape, got {type(shape).__name__}")
    rng = np.random.default_rng(seed)
    names, table = _vocabulary()
    n_words = (len(names) + 63) // 64
    cluster_p = np.array([c.weight for c in CLUSTERS], dtype=float)
    cluster_p /= cluster_p.sum()
    job = _make_jobs(rng, jobs, cluster_p, table, names, n_words, shape)
    user = _make_users(rng, users, cluster_p, table, names, n_words)
    u, j, seconds = impressions(rng, user, job, interactions, shape, len(CLUSTERS), len(LOCATIONS) + 1)

    weights = np.array([*STATIC_WEIGHTS, shape.freshness_weight, shape.history_cluster, shape.history_company,
                        shape.history_location])
    p, positive, intercept = simulate(user, job, weights, shape.freshness_days, len(LOCATIONS), shape.positive_rate,
                                      u, j, seconds, rng.random(len(u)))
    r = rng.random(len(p))
    event = np.where(positive, np.where(r < 0.75, "apply", "save"),
                     np.where(r < 0.5, "view", np.where(r < 0.8, "click", "dismiss")))

    uid, jid = _ids("u", users), _ids("j", jobs)
    interactions_df = pd.DataFrame({"user_id": uid[u], "job_id": jid[j], "event": event, "timestamp": _iso(seconds)})
    truth = pd.DataFrame({"user_id": uid[u], "job_id": jid[j], "p_positive": p.round(6)})
    jobs_df = job["frame"].assign(job_id=jid)[["job_id", *job["frame"].columns]]
    users_df = user["frame"].assign(user_id=uid)[["user_id", *user["frame"].columns]]
    oracle = MarketOracle(uid, jid, {k: user[k] for k in USER_KEYS}, {k: job[k] for k in JOB_KEYS}, weights,
                          intercept, shape.freshness_days, len(LOCATIONS),
                          np.r_[0, np.cumsum(np.bincount(u[positive], minlength=users))], j[positive],
                          seconds[positive])
    meta = {
        "generator_version": GENERATOR_VERSION, "seed": int(seed),
        "sizes": {"users": int(users), "jobs": int(jobs), "interactions": int(len(p)),
                  "requested_interactions": int(interactions)},
        "shape": shape.to_dict(),
        "timeline": {"start": str(EPOCH), "end": str(EPOCH + np.timedelta64(shape.seconds, "s"))},
        "positive_rate": round(float(positive.mean()), 6), "mean_p_positive": round(float(p.mean()), 6),
        "positive_events": ["apply", "save"], "negative_events": ["view", "click", "dismiss"],
        "weights": dict(zip(FEATURES, weights.tolist())), "intercept": round(intercept, 6),
        "stats": market_stats(jobs_df, interactions_df),
    }
    return SyntheticMarket(jobs_df, users_df, interactions_df, truth, meta, oracle)


def _make_jobs(rng: np.random.Generator, n: int, cluster_p: np.ndarray, table: np.ndarray, names: list[str],
               n_words: int, shape: MarketShape) -> dict[str, Any]:
    cluster = rng.choice(len(CLUSTERS), n, p=cluster_p)
    jtype = rng.choice(4, n, p=[0.72, 0.1, 0.13, 0.05])
    level = np.where(jtype == 3, 0, rng.choice(4, n, p=[0.25, 0.4, 0.25, 0.1]))
    loc_p = np.r_[1.0 / np.arange(1, len(LOCATIONS) + 1) ** 0.6, 1.2]
    loc = rng.choice(len(LOCATIONS) + 1, n, p=loc_p / loc_p.sum())  # the last one is Remote
    n_companies = max(10, n // 25)
    company_p = 1.0 / np.arange(1, n_companies + 1) ** 1.1
    company_p /= company_p.sum()
    company = rng.choice(n_companies, n, p=company_p)
    sizes = (table[cluster] >= 0).sum(axis=1)
    n_listed = rng.integers(3, 7, n)
    n_prose = np.minimum(rng.integers(1, 4, n), sizes - n_listed)
    listed_prose = _pick(rng, table, cluster, n_listed + n_prose)
    first_prose = np.arange(listed_prose.shape[1])[None, :] >= n_listed[:, None]
    listed, prose = np.where(first_prose, -1, listed_prose), np.where(first_prose, listed_prose, -1)
    other = (cluster + rng.integers(1, len(CLUSTERS), n)) % len(CLUSTERS)
    cross = np.where(rng.random((n, 1)) < 0.1, _pick(rng, table, other, np.ones(n, np.int64))[:, :1], -1)
    listed = np.concatenate([listed, cross], axis=1)
    pop = np.log(company_p[company] * n_companies) * 0.5 + rng.normal(0, 0.5, n)
    pop = (pop - pop.mean()) / (pop.std() + 1e-9)
    base = np.array([c.salary for c in CLUSTERS], dtype=float)[cluster]
    pay = base * _LEVEL_PAY[level] * _TYPE_PAY[jtype] * rng.lognormal(0, 0.12, n)
    shown = rng.random(n) > 0.15
    salary_min = pd.array(np.where(shown, np.round(pay * 0.9, -3), np.nan), dtype="Int64")
    salary_max = pd.array(np.where(shown, np.round(pay * 1.15, -3), np.nan), dtype="Int64")
    posted, expires = job_windows_seconds(rng, n, shape)
    company_names = [f"{COMPANY_PREFIXES[i % 20]} {COMPANY_SUFFIXES[(i // 20) % 20]}"
                     + (f" {i // 400 + 1}" if i >= 400 else "") for i in range(n_companies)]
    variant = rng.integers(0, 4, n)
    titles, descriptions = [], []
    all_locations = (*LOCATIONS, REMOTE)
    for i, (c, lv, jt, v, co, lo) in enumerate(zip(cluster.tolist(), level.tolist(), jtype.tolist(),
                                                 variant.tolist(), company.tolist(), loc.tolist())):
        spec = CLUSTERS[c]
        noun = spec.titles[v % len(spec.titles)]
        title = f"{noun} Intern" if jt == 3 else f"{_TITLE_PREFIX[lv]}{noun}"
        titles.append(title)
        uses = [names[k] for k in listed[i] if k >= 0][:2]
        extra = [names[k] for k in prose[i] if k >= 0]
        where = "remotely" if lo == len(LOCATIONS) else f"in {all_locations[lo]}"
        article = "an" if title[0] in "AEIOUi" else "a"
        text = (f"{company_names[co]} is hiring {article} {title} {where}. {spec.blurb} "
                f"Day to day you will use {' and '.join(uses)}. ")
        if extra:
            listing = " and ".join([", ".join(extra[:-1]), extra[-1]] if len(extra) > 1 else extra)
            text += (f"Experience with {listing} is a strong plus. " if v % 2 else
                     f"You should be comfortable with {listing}. ")
        text += _CLOSING[jt].format(level=LEVELS[lv])
        descriptions.append(text)
    frame = pd.DataFrame({
        "title": titles, "description": descriptions, "skills": _join(listed, names),
        "location": np.array(all_locations, dtype=object)[loc], "company": np.array(company_names, object)[company],
        "salary_min": salary_min, "salary_max": salary_max, "job_type": np.array(JOB_TYPES, object)[jtype],
        "experience_level": np.array(LEVELS, object)[level], "posted_at": _iso(posted), "expires_at": _iso(expires),
    })
    mask = _bitmask(np.concatenate([listed, prose], axis=1), n_words)
    return {"frame": frame, "cluster": cluster, "level": level, "loc": loc, "company": company, "pop": pop,
            "pay": pay, "mask": mask, "weight": np.exp(0.8 * pop), "posted": posted, "expires": expires}


def _make_users(rng: np.random.Generator, n: int, cluster_p: np.ndarray, table: np.ndarray, names: list[str],
                n_words: int) -> dict[str, Any]:
    cluster = rng.choice(len(CLUSTERS), n, p=cluster_p)
    second = np.where(rng.random(n) < 0.3, (cluster + rng.integers(1, len(CLUSTERS), n)) % len(CLUSTERS), -1)
    true_skills = np.concatenate([
        _pick(rng, table, cluster, rng.integers(4, 9, n)),
        np.where((second >= 0)[:, None], _pick(rng, table, np.maximum(second, 0), rng.integers(1, 4, n)), -1),
    ], axis=1)
    observed = np.where(rng.random(true_skills.shape) < 0.75, true_skills, -1)
    noise = np.where(np.arange(3)[None, :] < np.minimum(rng.poisson(0.6, n), 3)[:, None],
                     rng.integers(0, len(names), (n, 3)), -1)
    level = rng.choice(4, n, p=[0.3, 0.35, 0.25, 0.1])
    loc_p = 1.0 / np.arange(1, len(LOCATIONS) + 1) ** 0.6
    home = rng.choice(len(LOCATIONS), n, p=loc_p / loc_p.sum())
    base = np.array([c.salary for c in CLUSTERS], dtype=float)[cluster]
    expect = base * _LEVEL_PAY[level] * rng.lognormal(0, 0.2, n)
    frame = pd.DataFrame({
        "skills": _join(np.concatenate([observed, noise], axis=1), names),
        "location": np.where(rng.random(n) < 0.1, "", np.array(LOCATIONS, dtype=object)[home]),
        "experience_level": np.array(LEVELS, dtype=object)[level],
    })
    return {"frame": frame, "cluster": cluster, "second": second, "level": level, "home": home,
            "expect": expect, "mask": _bitmask(true_skills, n_words), "bias": rng.normal(0, 0.5, n),
            "activity": rng.lognormal(0, 0.8, n)}


def write_market(market: SyntheticMarket, out_dir: str | Path, fmt: str = "csv",
                 parts: Optional[int] = None) -> dict[str, Path]:
    """Write jobs, users, interactions, truth (.csv or .parquet), oracle.npz and meta.json; returns name -> path.
    ``parts``: the interactions as that many part files in a folder ``interactions/`` (the layout distributed
    preparation reads), each a slice of the rows in order."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    if parts is not None and not 1 <= parts <= 10_000:
        raise ValueError(f"parts must be in [1, 10000], got {parts!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("jobs", "users", "interactions", "truth"):
        frame, path = getattr(market, name), out / f"{name}.{fmt}"
        if name == "interactions" and parts is not None:
            (out / name).mkdir(exist_ok=True)
            for stale in (out / name).glob("part-*.*"):  # an earlier market's parts would be read with these
                stale.unlink()
            bounds = np.linspace(0, len(frame), parts + 1).astype(int)
            for i in range(parts):
                _write_frame(frame.iloc[bounds[i]:bounds[i + 1]], out / name / f"part-{i:05d}.{fmt}", fmt)
            written[name] = out / name
            continue
        _write_frame(frame, path, fmt)
        written[name] = path
    written["oracle"] = out / "oracle.npz"
    market.oracle.save(written["oracle"])
    written["meta"] = out / "meta.json"
    write_json_atomic(written["meta"], market.meta)
    return written


def _write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        frame.to_csv(path, index=False, lineterminator="\n", float_format="%.6g")
    else:
        frame.to_parquet(path, index=False)


def older_part(market: SyntheticMarket, fraction: float) -> SyntheticMarket:
    """The market as it stood at the ``fraction`` quantile of its interaction times: the interactions before
    it, the jobs posted before it, their truth rows (users, oracle and meta as they are). What a model published
    earlier was trained on (warm start: ``benchmarks/warm_start.py``)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    times = market.interactions["timestamp"].astype(str)
    cut = times.sort_values().iloc[int(fraction * (len(times) - 1))]
    interactions = market.interactions[times < cut].reset_index(drop=True)
    jobs = market.jobs[market.jobs["posted_at"].astype(str) < cut].reset_index(drop=True)
    truth = market.truth[market.truth["job_id"].isin(jobs["job_id"])].reset_index(drop=True)
    return dataclasses.replace(market, jobs=jobs, interactions=interactions, truth=truth)


def load_truth(directory: str | Path) -> Optional[pd.DataFrame]:
    """The truth frame (user_id, job_id, p_positive) of a written market; None when ``directory`` has no
    truth.csv / truth.parquet (real data)."""
    path = Path(directory) / "truth"
    if not any(path.with_name(path.name + suffix).is_file() for suffix in SUFFIXES):
        return None
    truth = read_frame(path, id_columns=("user_id", "job_id"))[["user_id", "job_id", "p_positive"]]
    truth["p_positive"] = truth["p_positive"].astype("float64")
    return truth


def oracle_auc(examples: pd.DataFrame, truth: Optional[pd.DataFrame]) -> Optional[float]:
    """ROC-AUC of the true p_positive on ``examples``' labels; rows without a truth entry (such as sampled
    negatives) are left out. None without truth or when the rows left have a single class."""
    from sklearn.metrics import roc_auc_score  # ~2 s to import: only where an oracle AUC is computed

    if truth is None:
        return None
    joined = examples[["user_id", "job_id", "label"]].merge(truth, on=["user_id", "job_id"], how="inner")
    if joined["label"].nunique() < 2:
        return None
    return float(roc_auc_score(joined["label"].to_numpy(), joined["p_positive"].to_numpy()))
