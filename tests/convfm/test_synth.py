"""convfm.data.synth: deterministic synthetic job markets that unfold in time, with an exact oracle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convfm.cli.data import INTERACTIONS, JOBS, USERS
from convfm.config import DataConfig
from convfm.data.liveness import job_windows
from convfm.data.loading import build_examples, load_job_market, split_examples
from convfm.data.market_stats import market_stats
from convfm.data.date_columns import order_key
from convfm.data.synth import (
    CLUSTERS, MarketShape, SyntheticMarket, generate_market, load_oracle, load_truth, oracle_auc, write_market,
)

FILES = ("jobs.csv", "users.csv", "interactions.csv", "truth.csv", "oracle.npz", "meta.json")


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    """The `convfm data synth` default market."""
    return generate_market(users=USERS, jobs=JOBS, interactions=INTERACTIONS, seed=0)


@pytest.fixture(scope="module")
def written(market: SyntheticMarket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_market(market, out)
    return out


def _micros(values: pd.Series) -> np.ndarray:
    return order_key(values, Path("x"), "t")


def test_same_seed_same_bytes_other_seed_other_files(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("same", 0), ("other", 1)):
        write_market(generate_market(users=800, jobs=600, interactions=5_000, seed=seed), tmp_path / name)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "same" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_tables_shapes_ids_and_columns(market: SyntheticMarket) -> None:
    assert len(market.jobs) == JOBS and len(market.users) == USERS and len(market.interactions) == INTERACTIONS
    assert list(market.jobs.columns) == ["job_id", "title", "description", "skills", "location", "company",
                                         "salary_min", "salary_max", "job_type", "experience_level", "posted_at",
                                         "expires_at"]
    assert list(market.users.columns) == ["user_id", "skills", "location", "experience_level"]
    assert list(market.interactions.columns) == ["user_id", "job_id", "event", "timestamp"]
    assert market.jobs["job_id"].iloc[45] == "j000045" and market.users["user_id"].iloc[123] == "u000123"
    assert not market.interactions.duplicated(["user_id", "job_id"]).any()
    pd.testing.assert_frame_equal(market.truth[["user_id", "job_id"]], market.interactions[["user_id", "job_id"]])
    assert market.interactions["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").all()
    assert market.jobs["expires_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").all()
    assert set(market.jobs["job_type"]) == {"full_time", "part_time", "contract", "internship"}
    assert 20 <= len(CLUSTERS) and all(8 <= len(c.skills) <= 15 for c in CLUSTERS)


def test_every_impression_is_of_a_live_job_and_jobs_expire_after_posting(market: SyntheticMarket) -> None:
    posted, expires = _micros(market.jobs["posted_at"]), _micros(market.jobs["expires_at"])
    assert (expires > posted).all()
    lifetime_days = (expires - posted) / 86_400e6
    assert 20 <= np.median(lifetime_days) <= 40 and lifetime_days.min() > 0
    windows = job_windows(market.jobs, default_lifetime_days=None)
    codes = pd.Index(market.jobs["job_id"]).get_indexer(market.interactions["job_id"])
    times = _micros(market.interactions["timestamp"])
    assert windows.live(times, codes[:, None]).all()
    start, end = _micros(pd.Series(["2024-01-01T00:00:00", "2024-03-25T00:00:00"]))  # 12 weeks
    assert start <= times.min() and times.max() <= end
    assert (posted < start).mean() > 0.1 and (posted >= start).mean() > 0.6  # a catalog on day 1, then a flow


def test_default_market_looks_like_a_job_view_log(market: SyntheticMarket) -> None:
    stats = market.meta["stats"]
    assert stats["interactions_per_user_median"] <= 5
    assert stats["interactions_per_user_mean"] == pytest.approx(INTERACTIONS / USERS)
    counts = market.interactions.groupby("user_id").size()
    assert counts.max() > 10 * counts.median()  # a long tail of active users
    assert stats["last_tenth_new_job_share"] > 0.5
    assert stats["positives_within_13_days"] > 0.85
    assert 0.1 < stats["cold_last_positive_share"] < 0.6
    events = market.interactions["event"].value_counts(normalize=True)
    assert 0.18 <= events[["apply", "save"]].sum() <= 0.26
    assert 2.0 <= events["apply"] / events["save"] <= 4.5
    times = _micros(market.interactions["timestamp"])
    assert (pd.Series(times).groupby(market.interactions["user_id"].to_numpy()).diff().dropna() > 0).all()


def test_stats_from_the_written_tables_match_meta(market: SyntheticMarket, written: Path) -> None:
    loaded = load_job_market(DataConfig(path=str(written)))
    assert market_stats(loaded.jobs, loaded.interactions) == market.meta["stats"]
    meta = json.loads((written / "meta.json").read_text())
    assert meta["shape"]["weeks"] == 12 and meta["stats"]["users"] == USERS and meta["seed"] == 0


def test_oracle_reproduces_truth_after_a_round_trip(written: Path) -> None:
    oracle, truth = load_oracle(written), load_truth(written)
    interactions = pd.read_csv(written / "interactions.csv")
    p = oracle.score(interactions["user_id"].to_numpy(), interactions["job_id"].to_numpy()[:, None],
                     _micros(interactions["timestamp"]))
    assert p.shape == (len(truth), 1) and p.dtype == np.float64
    np.testing.assert_allclose(p[:, 0], truth["p_positive"].to_numpy(), atol=1e-5)
    assert load_oracle(written.parent) is None  # no oracle.npz: real data


def test_oracle_ranks_the_catalog_and_history_moves_it(market: SyntheticMarket) -> None:
    oracle, frame = market.oracle, market.interactions
    positives = frame[frame["event"].isin(["apply", "save"])]
    heavy = positives["user_id"].value_counts().index[0]
    mine = positives[positives["user_id"] == heavy]
    first, last = _micros(mine["timestamp"])[[0, -1]]
    catalog = market.jobs["job_id"].to_numpy()[None, :200]
    before, after = oracle.score(np.array([heavy, heavy]), np.repeat(catalog, 2, axis=0), np.array([first, last]))
    assert ((before > 0) & (before < 1)).all() and not np.allclose(before, after)
    with pytest.raises(ValueError, match=r"unknown user id 'nobody' \(2 unknown\)"):
        oracle.score(np.array(["nobody", heavy, "nobody"]), np.repeat(catalog, 3, axis=0), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"unknown job id 'j9' \(1 unknown\)"):
        oracle.score(np.array([heavy]), np.array([["j9", catalog[0, 0]]]), np.zeros(1, np.int64))


def test_oracle_auc_is_high_but_not_perfect(written: Path) -> None:
    config = DataConfig(path=str(written))
    examples = build_examples(load_job_market(config), config)
    truth = load_truth(written)
    assert 0.75 <= oracle_auc(examples, truth) <= 0.97
    assert 0.75 <= oracle_auc(split_examples(examples, config).test, truth) <= 0.97


def test_knobs_give_long_histories_and_a_static_truth() -> None:
    dense = generate_market(users=300, jobs=400, interactions=9_000, seed=2, shape=MarketShape(activity_sigma=0.3))
    counts = dense.interactions.groupby("user_id").size()
    assert counts.median() >= 20
    flat = MarketShape(freshness_weight=0.0, history_cluster=0.0, history_company=0.0, history_location=0.0)
    static = generate_market(users=300, jobs=400, interactions=9_000, seed=2, shape=flat)
    assert static.meta["weights"]["freshness"] == 0.0 and static.meta["shape"]["activity_sigma"] == 1.6


@pytest.mark.parametrize("field, value, message", [
    ("weeks", 0, r"weeks: must be an integer in \[1, 520\], got 0"),
    ("exposure_decay_days", 0.0, r"exposure_decay_days: must be a number in \[0.01, 3650\], got 0.0"),
    ("activity_sigma", -1, r"activity_sigma: must be a number in \[0, 4\], got -1"),
    ("positive_rate", 1.0, r"positive_rate: must be a number in \(0, 1\), got 1.0"),
])
def test_bad_knobs_name_the_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarketShape(**{field: value})


def test_parquet_output_loads(tmp_path: Path) -> None:
    small = generate_market(users=50, jobs=40, interactions=300, seed=5)
    written = write_market(small, tmp_path, fmt="parquet")
    assert written["jobs"].name == "jobs.parquet" and written["oracle"].name == "oracle.npz"
    loaded = load_job_market(DataConfig(path=str(tmp_path)))
    assert len(loaded.interactions) == len(small.interactions)
    assert load_truth(tmp_path)["p_positive"].between(0, 1).all()


def test_interactions_as_part_files_load_as_the_one_file(tmp_path: Path) -> None:
    small = generate_market(users=50, jobs=40, interactions=300, seed=5)
    written = write_market(small, tmp_path, fmt="parquet", parts=3)
    parts = sorted(p.name for p in written["interactions"].iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    loaded = load_job_market(DataConfig(path=str(tmp_path)))  # the in-memory path reads the folder in name order
    pd.testing.assert_frame_equal(loaded.interactions[["user_id", "job_id"]],
                                  small.interactions[["user_id", "job_id"]].astype(str), check_dtype=False)
    with pytest.raises(ValueError, match="parts must be in"):
        write_market(small, tmp_path / "x", parts=0)


def test_small_and_invalid_sizes() -> None:
    tiny = generate_market(users=10, jobs=4, interactions=5, seed=0)
    assert 1 <= len(tiny.interactions) <= 5 and not tiny.interactions.duplicated(["user_id", "job_id"]).any()
    with pytest.raises(ValueError, match=r"users: must be an integer >= 1, got 0"):
        generate_market(users=0, jobs=10, interactions=10)


def test_a_market_grown_past_what_was_generated_has_no_oracle(tmp_path: Path, caplog) -> None:
    """Day 2 of the daily loop: the event log names a job posted live and a new user. The oracle has no truth for
    them (it raised "unknown job id" inside validation), so the data gets no oracle column, with a warning."""
    from convfm.data.prepare import prepare_data

    write_market(generate_market(users=200, jobs=150, interactions=2_000, seed=1), tmp_path)
    assert prepare_data(DataConfig(path=str(tmp_path))).oracle is not None
    jobs = pd.read_csv(tmp_path / "jobs.csv", dtype=str)
    new_job = jobs.iloc[[0]].assign(job_id="j-new-0001")
    pd.concat([jobs, new_job]).to_csv(tmp_path / "jobs.csv", index=False)
    log = pd.read_csv(tmp_path / "interactions.csv", dtype=str)
    applied = log.iloc[[-1]].assign(job_id="j-new-0001", user_id="u-new", event="apply")
    pd.concat([log, applied]).to_csv(tmp_path / "interactions.csv", index=False)
    with caplog.at_level("WARNING"):
        grown = prepare_data(DataConfig(path=str(tmp_path)))
    assert grown.oracle is None and grown.truth is None
    assert "no oracle column: the data holds 1 job(s) and 1 user(s) the synthetic market did not" in caplog.text
