"""Examples built from a market (convfm.data.loading): the label rules, sampled negatives and the splits."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import JobMarket, build_examples, split_examples


# ------------------------------------------------------------------------------------------ examples
def make_market(rows: list[tuple[str, str, str, int]], jobs: list[str]) -> JobMarket:
    interactions = pd.DataFrame(rows, columns=["user_id", "job_id", "event", "timestamp"])
    return JobMarket(jobs=pd.DataFrame({"job_id": jobs}), users=None, interactions=interactions)


def test_label_rules() -> None:
    market = make_market([
        ("u1", "j1", "view", 1), ("u1", "j1", "apply", 5), ("u1", "j1", "view", 9),  # any positive wins
        ("u1", "j2", "click", 2), ("u1", "j2", "dismiss", 7),  # negative, latest negative time
        ("u1", "j3", "save", 3), ("u1", "j3", "apply", 4),  # positive, latest positive time
        ("u2", "j1", "view", 6),  # dropped: view is in neither list below
    ], jobs=["j1", "j2", "j3"])
    config = DataConfig(negative_events=("click", "dismiss"))
    examples = build_examples(market, config)
    got = {(u, j): (lab, ts) for u, j, lab, ts in examples.itertuples(index=False)}
    assert got == {("u1", "j1"): (1.0, 5), ("u1", "j2"): (0.0, 7), ("u1", "j3"): (1.0, 4)}
    assert examples["label"].dtype == np.float32 and examples["timestamp"].dtype == np.int64
    assert examples["timestamp"].is_monotonic_increasing


def random_market(n_users: int, n_jobs: int, n_rows: int, seed: int = 0) -> JobMarket:
    rng = np.random.default_rng(seed)
    users = np.char.add("u", rng.integers(0, n_users, n_rows).astype(str))
    jobs = np.char.add("j", rng.integers(0, n_jobs, n_rows).astype(str))
    events = np.array(["view", "click", "dismiss", "apply", "save"])[rng.integers(0, 5, n_rows)]
    rows = pd.DataFrame({"user_id": users, "job_id": jobs, "event": events,
                         "timestamp": rng.permutation(n_rows).astype(np.int64)})
    return JobMarket(jobs=pd.DataFrame({"job_id": [f"j{i}" for i in range(n_jobs)]}), users=None,
                     interactions=rows)


def test_negative_sampling_count_unseen_and_deterministic() -> None:
    market = random_market(50, 200, 2000)
    config = DataConfig(negative_ratio=3, seed=1, negative_sampling="uniform")
    plain = build_examples(market, DataConfig())
    examples = build_examples(market, config)
    seen = set(zip(market.interactions["user_id"], market.interactions["job_id"]))
    pairs = list(zip(examples["user_id"], examples["job_id"]))
    sampled = examples[[p not in seen for p in pairs]]
    assert len(sampled) == 3 * int(plain["label"].sum())
    assert (sampled["label"] == 0).all()
    assert len(set(pairs)) == len(pairs)  # sampled pairs are unique and never an interacted pair
    assert set(sampled["job_id"]) <= set(market.jobs["job_id"])
    positive_times = plain[plain["label"] == 1].groupby("user_id")["timestamp"].apply(set)
    assert all(t in positive_times[u] for u, t in zip(sampled["user_id"], sampled["timestamp"]))
    pd.testing.assert_frame_equal(examples, build_examples(market, config))
    assert not examples.equals(build_examples(market, config, rng_seed=2))


def test_negative_sampling_gives_up_when_catalog_is_exhausted(caplog: pytest.LogCaptureFixture) -> None:
    market = make_market([("u1", "j1", "apply", 1), ("u1", "j2", "view", 2)], jobs=["j1", "j2", "j3"])
    with caplog.at_level(logging.WARNING, logger="convfm.data.negatives"):
        examples = build_examples(market, DataConfig(negative_ratio=5, negative_sampling="uniform"))
    assert examples[["job_id", "label"]].values.tolist() == [["j1", 1.0], ["j3", 0.0], ["j2", 0.0]]
    assert "sampled 1 of 5 negatives" in caplog.text


# ------------------------------------------------------------------------------------------ splits
def test_time_split_has_no_leakage() -> None:
    market = random_market(40, 300, 3000)
    config = DataConfig(negative_ratio=1, valid_fraction=0.2, test_fraction=0.2)
    examples = build_examples(market, config)
    splits = split_examples(examples, config)
    assert sum(len(s) for s in (splits.train, splits.valid, splits.test)) == len(examples)
    keys = [set(zip(s["user_id"], s["job_id"])) for s in (splits.train, splits.valid, splits.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    last_train = splits.train.groupby("user_id")["timestamp"].max()
    first_valid = splits.valid.groupby("user_id")["timestamp"].min()
    first_test = splits.test.groupby("user_id")["timestamp"].min()
    last_valid = splits.valid.groupby("user_id")["timestamp"].max()
    assert (first_test >= last_train[first_test.index]).all()
    assert (first_valid >= last_train[first_valid.index]).all()
    assert (first_test >= last_valid.reindex(first_test.index).fillna(-1)).all()
    moments = examples.groupby("user_id")["timestamp"].nunique()  # a positive and its negatives are one moment
    test_moments = splits.test.groupby("user_id")["timestamp"].nunique().reindex(moments.index, fill_value=0)
    assert (test_moments == np.where(moments >= 3, np.maximum(1, np.floor(moments * 0.2 + 0.5)), 0)).all()
    # no moment straddles two splits
    placed = pd.concat([s.assign(part=name) for name, s in zip("tvs", (splits.train, splits.valid, splits.test))])
    assert (placed.groupby(["user_id", "timestamp"])["part"].nunique() == 1).all()
    assert (examples.groupby(["user_id", "timestamp"]).size() > 1).any()  # there are moments of several rows


def test_time_split_keeps_a_positive_with_the_negatives_sampled_at_its_time() -> None:
    """Real logs: most users have one or two events, each with its sampled negatives at the same time. Split by
    row, one such user put the positive in one split and the negatives in the other two."""
    rows = [("once", "a", 1.0, 5), ("once", "b", 0.0, 5), ("once", "c", 0.0, 5)]  # one apply, two negatives
    rows += [("busy", f"p{t}", 1.0, t) for t in range(1, 6)] + [("busy", f"n{t}", 0.0, t) for t in range(1, 6)]
    examples = pd.DataFrame(rows, columns=["user_id", "job_id", "label", "timestamp"])
    splits = split_examples(examples, DataConfig(valid_fraction=0.2, test_fraction=0.2))
    assert sorted(splits.train["job_id"]) == ["a", "b", "c", "n1", "n2", "n3", "p1", "p2", "p3"]
    assert sorted(splits.valid["job_id"]) == ["n4", "p4"] and sorted(splits.test["job_id"]) == ["n5", "p5"]


def test_time_split_small_users_stay_in_train() -> None:
    examples = pd.DataFrame({"user_id": ["a", "a", "b", "b", "b"], "job_id": ["j1", "j2", "j1", "j2", "j3"],
                             "label": np.ones(5, np.float32), "timestamp": [1, 2, 3, 1, 2]})
    splits = split_examples(examples, DataConfig())
    assert splits.train["user_id"].tolist() == ["a", "a", "b"] and splits.train["job_id"].tolist()[2] == "j2"
    assert splits.valid[["user_id", "job_id"]].values.tolist() == [["b", "j3"]]
    assert splits.test[["user_id", "job_id"]].values.tolist() == [["b", "j1"]]


def test_random_split_is_seeded_and_disjoint() -> None:
    examples = build_examples(random_market(30, 100, 1500), DataConfig())
    config = DataConfig(split="random", valid_fraction=0.1, test_fraction=0.2, seed=3)
    one, two = split_examples(examples, config), split_examples(examples, config)
    pd.testing.assert_frame_equal(one.test, two.test)
    assert len(one.test) == round(len(examples) * 0.2) and len(one.valid) == round(len(examples) * 0.1)
    keys = [set(zip(s["user_id"], s["job_id"])) for s in (one.train, one.valid, one.test)]
    assert sum(map(len, keys)) == len(set().union(*keys)) == len(examples)


@pytest.mark.timeout(90)  # ~2 s on 2 idle cores: only a step gone quadratic in the rows gets near the limit
def test_examples_and_split_scale_to_300k_rows() -> None:
    market = random_market(20_000, 20_000, 300_000)
    config = DataConfig(negative_ratio=2)
    splits = split_examples(build_examples(market, config), config)
    assert len(splits.train) > len(splits.test) > 0
