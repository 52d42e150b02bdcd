"""How much of the oracle's test ROC-AUC could any model of the data reach? The synthetic market's ceiling.

The oracle scores with the generator's latent state, some of which no column of the data shows. This scores
the test examples of ``benchmarks/quality.py``'s market (same sizes, seed and split, default data config) with
the oracle's own formula, each latent quantity in turn, then all of them, replaced by what the data shows:

  bias      a user's bias (nowhere in the data) -> 0
  pop       a job's popularity (its company's share plus per-job noise) -> the mean over the company's jobs
  expect    a user's salary expectation -> the mean over users of the same cluster and level
  skills    a user's true skills -> the ``skills`` column of users.csv (most of them, plus noise)
  home      a user's home -> none where users.csv leaves the location blank
  pay       a job's pay -> the cluster x level x type mean where the salary is not shown
  clusters  a user's main and second cluster -> the clusters with the most and (at least 2) second most
            observed skills

The last row adds back a user's bias as estimated from their own impressions strictly before the example
(one Laplace step from the prior N(0, 0.5^2), with the other terms at their true values for those impressions,
so it is an optimistic estimate). ROC-AUC on all test examples (impressions and sampled live negatives, as the
quality table), on the impressions only, and on the test examples of users with / without a training example.

    .venv/bin/python benchmarks/observable_ceiling.py [--users 10000 --jobs 20000 --interactions 50000 --seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from convfm.config import DataConfig
from convfm.data.prepare import prepare_data
from convfm.data.synth import CLUSTERS, JOB_TYPES, LEVELS, SyntheticMarket, _bitmask, _vocabulary, generate_market, \
    write_market
from convfm.data.synth_oracle import MarketOracle, sigmoid

BIAS_STD = 0.5  # the generator's user bias: N(0, 0.5)


def group_mean(values: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Each row's value replaced by the mean over the rows with the same keys."""
    frame = pd.DataFrame({"v": values, **{f"k{i}": k for i, k in enumerate(keys)}})
    return frame.groupby([f"k{i}" for i in range(len(keys))])["v"].transform("mean").to_numpy()


def observed_users(market: SyntheticMarket) -> dict[str, np.ndarray]:
    """From users.csv's skills: the skill bit masks and the main / second cluster they point to."""
    names, table = _vocabulary()
    index = {s: i for i, s in enumerate(names)}
    lists = [[index[s] for s in str(v).split(";") if s in index] for v in market.users["skills"].fillna("")]
    skills = np.full((len(lists), max(map(len, lists), default=1) or 1), -1, np.int64)
    for r, row in enumerate(lists):
        skills[r, :len(row)] = row
    words = market.oracle.users["mask"].shape[1]
    mask = _bitmask(skills, words)
    overlap = np.bitwise_count(mask[:, None, :] & _bitmask(table, words)[None]).sum(-1).astype(float)  # (U, C)
    order = np.argsort(-(overlap + 1e-3 * np.array([c.weight for c in CLUSTERS])), axis=1)  # ties: commoner
    second = np.where(overlap[np.arange(len(order)), order[:, 1]] >= 2, order[:, 1], -1)
    return {"mask": mask, "cluster": order[:, 0], "second": second}


def observable_parts(market: SyntheticMarket) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """name -> {"users": {key: array}, "jobs": {key: array}}: the latent arrays each replacement swaps in."""
    o, jobs = market.oracle, market.jobs
    level = jobs["experience_level"].map({v: i for i, v in enumerate(LEVELS)}).to_numpy()
    job_type = jobs["job_type"].map({v: i for i, v in enumerate(JOB_TYPES)}).to_numpy()
    observed = observed_users(market)
    blank = market.users["location"].fillna("").eq("").to_numpy()
    return {
        "bias": {"users": {"bias": np.zeros_like(o.users["bias"])}},
        "pop": {"jobs": {"pop": group_mean(o.jobs["pop"], o.jobs["company"])}},
        "expect": {"users": {"expect": group_mean(o.users["expect"], o.users["cluster"], o.users["level"])}},
        "skills": {"users": {"mask": observed["mask"]}},
        "home": {"users": {"home": np.where(blank, -2, o.users["home"])}},
        "pay": {"jobs": {"pay": np.where(jobs["salary_min"].isna().to_numpy(),
                                         group_mean(o.jobs["pay"], o.jobs["cluster"], level, job_type),
                                         o.jobs["pay"])}},
        "clusters": {"users": {"cluster": observed["cluster"], "second": observed["second"]}},
    }


def with_parts(oracle: MarketOracle, parts: list[dict[str, dict[str, np.ndarray]]]) -> MarketOracle:
    users, jobs = dict(oracle.users), dict(oracle.jobs)
    for part in parts:
        users.update(part.get("users", {}))
        jobs.update(part.get("jobs", {}))
    return dataclasses.replace(oracle, users=users, jobs=jobs)


def bias_from_impressions(market: SyntheticMarket, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Per (user position, time in microseconds): the user's bias estimated from their impressions strictly
    before it, sum(y - p0) / (1 / 0.5^2 + sum p0 (1 - p0)) with p0 the true probability without the bias."""
    o, inter = market.oracle, market.interactions
    owner = pd.Index(o.user_ids).get_indexer(inter["user_id"])
    stamp = pd.to_datetime(inter["timestamp"]).to_numpy("datetime64[us]").astype(np.int64)
    y = inter["event"].isin(["apply", "save"]).to_numpy(float)
    p = market.truth["p_positive"].to_numpy(float).clip(1e-6, 1 - 1e-6)
    p0 = sigmoid(np.log(p / (1 - p)) - o.users["bias"][owner])
    order = np.lexsort((stamp, owner))
    span = np.int64(1) << 42  # microseconds: ~139 years per user
    keys = owner[order].astype(np.int64) * span + (stamp[order] - stamp.min() + 1)
    end = np.searchsorted(keys, users.astype(np.int64) * span + np.clip(times - stamp.min() + 1, 0, span - 1))
    start = np.searchsorted(keys, users.astype(np.int64) * span)
    residual, information = np.r_[0, np.cumsum((y - p0)[order])], np.r_[0, np.cumsum((p0 * (1 - p0))[order])]
    return (residual[end] - residual[start]) / (BIAS_STD ** -2 + information[end] - information[start])


def ceiling_rows(market: SyntheticMarket, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scorer name -> probabilities of the test examples."""
    o = market.oracle
    users, jobs, times = test["user_id"].to_numpy(), test["job_id"].to_numpy()[:, None], test["timestamp"].to_numpy()
    parts = observable_parts(market)
    score = lambda chosen: with_parts(o, chosen).score(users, jobs, times)[:, 0]  # noqa: E731
    rows = {"oracle (latent state)": score([])}
    rows.update({f"oracle, {name} as observed": score([part]) for name, part in parts.items()})
    rows["all as observed"] = score(list(parts.values()))
    p = score([part for name, part in parts.items() if name != "bias"])
    bias = bias_from_impressions(market, pd.Index(o.user_ids).get_indexer(users), times)
    rows["all as observed, bias from earlier impressions"] = sigmoid(np.log(p / (1 - p)) + bias)
    return rows


def auc_table(rows: dict[str, np.ndarray], labels: np.ndarray, subsets: dict[str, np.ndarray]) -> str:
    lines = ["| scorer | " + " | ".join(subsets) + " |", "|---|" + "---:|" * len(subsets)]
    for name, p in rows.items():
        cells = [f"{roc_auc_score(labels[m], p[m]):.4f}" if len(np.unique(labels[m])) == 2 else "-"
                 for m in subsets.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    market = generate_market(args.users, args.jobs, args.interactions, seed=args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        write_market(market, workdir)
        data = prepare_data(DataConfig(path=workdir, seed=args.seed, split="global_time"))
    test, labels = data.frames["test"], data.frames["test"]["label"].to_numpy()
    shown = pd.MultiIndex.from_frame(market.interactions[["user_id", "job_id"]]).unique()
    impression = pd.MultiIndex.from_frame(test[["user_id", "job_id"]]).isin(shown)
    trained = test["user_id"].isin(data.frames["train"]["user_id"]).to_numpy()
    subsets: dict[str, Any] = {"all test examples": np.ones(len(test), bool), "impressions": impression,
                               "users with a training example": trained, "users without": ~trained}
    print(f"{args.users} users, {args.jobs} jobs, {args.interactions} interactions, seed {args.seed}; test split: "
          f"{len(test)} examples, {int(impression.sum())} impressions ({int(labels[impression].sum())} positive), "
          f"{int((~impression).sum())} sampled live negatives; {trained.mean():.1%} of them of users with a "
          f"training example\n")
    print(auc_table(ceiling_rows(market, test), labels, subsets))


if __name__ == "__main__":
    main()
