"""convfm.data.synth: deterministic, realistic, learnable synthetic job markets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig
from convfm.data.loading import build_examples, load_job_market, split_examples
from convfm.data.synth import CLUSTERS, SyntheticMarket, generate_market, load_truth, oracle_auc, write_market

FILES = ("jobs.csv", "users.csv", "interactions.csv", "truth.csv", "meta.json")


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return generate_market(users=2000, jobs=1000, interactions=50_000, seed=0)


@pytest.fixture(scope="module")
def written(market: SyntheticMarket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_market(market, out)
    return out


def test_same_seed_same_bytes_other_seed_other_files(written: Path, tmp_path: Path) -> None:
    write_market(generate_market(users=2000, jobs=1000, interactions=50_000, seed=0), tmp_path / "same")
    write_market(generate_market(users=2000, jobs=1000, interactions=50_000, seed=1), tmp_path / "other")
    for name in FILES:
        assert (written / name).read_bytes() == (tmp_path / "same" / name).read_bytes(), name
    for name in ("jobs.csv", "users.csv", "interactions.csv", "truth.csv"):
        assert (written / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_tables_shapes_ids_and_columns(market: SyntheticMarket) -> None:
    assert len(market.jobs) == 1000 and len(market.users) == 2000 and len(market.interactions) == 50_000
    assert list(market.jobs.columns) == ["job_id", "title", "description", "skills", "location", "company",
                                         "salary_min", "salary_max", "job_type", "experience_level", "posted_at"]
    assert list(market.users.columns) == ["user_id", "skills", "location", "experience_level"]
    assert list(market.interactions.columns) == ["user_id", "job_id", "event", "timestamp"]
    assert market.jobs["job_id"].iloc[45] == "j000045" and market.users["user_id"].iloc[123] == "u000123"
    assert not market.interactions.duplicated(["user_id", "job_id"]).any()
    pd.testing.assert_frame_equal(market.truth[["user_id", "job_id"]], market.interactions[["user_id", "job_id"]])
    assert set(market.jobs["job_type"]) == {"full_time", "part_time", "contract", "internship"}
    assert set(market.jobs["experience_level"]) == {"entry", "mid", "senior", "lead"}
    assert 20 <= len(CLUSTERS) and all(8 <= len(c.skills) <= 15 for c in CLUSTERS)
    assert 28 <= market.jobs["location"].nunique() <= 31


def test_positive_rate_and_events(market: SyntheticMarket) -> None:
    events = market.interactions["event"].value_counts(normalize=True)
    positive = events[["apply", "save"]].sum()
    assert 0.15 <= positive <= 0.30 and abs(market.meta["positive_rate"] - positive) < 1e-9
    assert 2.0 <= events["apply"] / events["save"] <= 4.5
    assert set(events.index) == {"view", "click", "save", "apply", "dismiss"}


def test_descriptions_mention_skills_missing_from_skills_column(market: SyntheticMarket) -> None:
    vocabulary = {s for c in CLUSTERS for s in c.skills}
    hidden = [any(s in desc and s not in listed.split(";") for s in vocabulary if len(s) > 3)
              for desc, listed in zip(market.jobs["description"], market.jobs["skills"])]
    assert np.mean(hidden) > 0.8
    assert market.jobs["title"].str.contains("Senior|Lead|Junior|Intern").mean() > 0.4


def test_realistic_marginals(market: SyntheticMarket) -> None:
    jobs, users = market.jobs, market.users
    company_share = jobs["company"].value_counts(normalize=True)
    assert company_share.iloc[0] > 5 * company_share.median()  # Zipf-like popularity
    pay = jobs.groupby("experience_level")["salary_min"].median()
    assert pay["entry"] < pay["mid"] < pay["senior"] < pay["lead"]
    assert 0.05 <= jobs["salary_min"].isna().mean() <= 0.25
    assert 0.05 <= (users["location"] == "").mean() <= 0.15
    times = pd.to_datetime(market.interactions["timestamp"])
    assert times.groupby(market.interactions["user_id"]).apply(lambda t: t.is_monotonic_increasing).all()
    counts = market.interactions.groupby("user_id").size()
    assert counts.max() > 4 * counts.median()  # active users see more jobs


def test_oracle_auc_is_high_but_not_perfect(written: Path) -> None:
    config = DataConfig(path=str(written))
    market = load_job_market(config)
    assert market.users is not None and len(market.users) == 2000
    examples = build_examples(market, config)
    assert len(examples) == 50_000
    truth = load_truth(written)
    auc = oracle_auc(examples, truth)
    assert 0.75 <= auc <= 0.97
    test = split_examples(examples, config).test
    assert 0.75 <= oracle_auc(test, truth) <= 0.97
    meta = json.loads((written / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["sizes"]["interactions"] == 50_000 and "generator_version" in meta


def test_parquet_output_loads(market: SyntheticMarket, tmp_path: Path) -> None:
    small = generate_market(users=50, jobs=40, interactions=300, seed=5)
    written = write_market(small, tmp_path, fmt="parquet")
    assert written["jobs"].name == "jobs.parquet"
    loaded = load_job_market(DataConfig(path=str(tmp_path)))
    assert len(loaded.interactions) == len(small.interactions)
    assert load_truth(tmp_path)["p_positive"].between(0, 1).all()


def test_small_and_invalid_sizes() -> None:
    tiny = generate_market(users=10, jobs=4, interactions=5, seed=0)
    assert len(tiny.interactions) == 5 and not tiny.interactions.duplicated(["user_id", "job_id"]).any()
    with pytest.raises(ValueError, match=r"users: must be an integer >= 1, got 0"):
        generate_market(users=0, jobs=10, interactions=10)
