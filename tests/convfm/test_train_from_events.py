"""Training reads the feedback event log as interactions (``data.events``, ``--events LOG``): alone or after
the data directory's own interactions, event types turned into labels by the data config (dismiss negative)."""
from __future__ import annotations

import logging
import shutil
import types

import numpy as np
import pandas as pd
import pytest

from convfm.cli.main import build_parser
from convfm.cli.train import resolve_configs
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.loading import build_examples, load_job_market
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.errors import ConfigError, DataValidationError
from convfm.store.event_log import EventLog, iso, parse_time
from convfm.training.in_process import fit_in_process

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A small market whose interactions were logged as events: ``root`` holds the files, ``jobs_only`` the
    jobs and users alone, ``log`` the event log of the same interactions (in batches of 500, like POSTs)."""
    root = tmp_path_factory.mktemp("events_market")
    write_market(generate_market(users=120, jobs=80, interactions=3000, seed=1), root)
    interactions = pd.read_csv(root / "interactions.csv", dtype=str)
    log = root / "live" / "events"
    writer = EventLog.open(log)
    rows = interactions.to_dict("records")
    for start in range(0, len(rows), 500):
        writer.append([{"event_id": f"e{start + i}", "type": r["event"], "user_id": r["user_id"],
                        "job_id": r["job_id"], "timestamp": iso(parse_time(r["timestamp"]))}
                       for i, r in enumerate(rows[start:start + 500])])
    jobs_only = tmp_path_factory.mktemp("jobs_only")
    for name in ("jobs.csv", "users.csv"):
        shutil.copy(root / name, jobs_only / name)
    return root, jobs_only, log, interactions


def test_the_log_alone_gives_the_same_examples_as_the_file(market):
    root, jobs_only, log, _ = market
    from_file = build_examples(load_job_market(DataConfig(path=str(root))), DataConfig(negative_ratio=0))
    logged = load_job_market(DataConfig(path=str(jobs_only), events=str(log)))
    assert logged.calendar and logged.source["interactions"] == str(log)
    from_log = build_examples(logged, DataConfig(negative_ratio=0))
    pd.testing.assert_frame_equal(from_file, from_log)
    labels = dict(zip(from_log["job_id"] + "/" + from_log["user_id"], from_log["label"]))
    events = logged.interactions.groupby(["user_id", "job_id"])["event"].agg(set)
    dismissed_only = [f"{j}/{u}" for (u, j), kinds in events.items() if kinds == {"dismiss"}]
    assert dismissed_only and all(labels[key] == 0 for key in dismissed_only)  # dismiss is a negative


def test_events_come_after_the_files_interactions(market, tmp_path):
    root, _, _, interactions = market
    log = tmp_path / "events"
    EventLog.open(log).append([{"event_id": "new", "type": "apply", "user_id": "u-new", "job_id": "j000003",
                                "timestamp": "2030-01-01T00:00:00.000000Z"}])
    loaded = load_job_market(DataConfig(path=str(root), events=str(log)))
    assert len(loaded.interactions) == len(interactions) + 1
    assert loaded.interactions.iloc[-1][["user_id", "event"]].tolist() == ["u-new", "apply"]
    assert loaded.interactions["timestamp"].iloc[-1] == loaded.interactions["timestamp"].max()


def test_a_market_with_numeric_timestamps_refuses_the_log(market, tmp_path):
    root, _, log, interactions = market
    shutil.copy(root / "jobs.csv", tmp_path / "jobs.csv")
    interactions.assign(timestamp=np.arange(len(interactions))).to_csv(tmp_path / "interactions.csv", index=False)
    with pytest.raises(DataValidationError, match="interactions.csv: timestamps are numbers or row order"):
        load_job_market(DataConfig(path=str(tmp_path), events=str(log)))
    with pytest.raises(ConfigError, match="events: must be an event log path"):
        DataConfig(events="")


def test_train_flag_and_a_model_trained_from_the_log(market):
    _, jobs_only, log, _ = market
    args = build_parser().parse_args(["train", "--data", str(jobs_only), "--events", str(log)])
    data_config, _, _, _ = resolve_configs(args)
    assert (data_config.path, data_config.events) == (str(jobs_only), str(log))
    data = prepare_data(data_config)
    model, history = fit_in_process(data, ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16,)),
                                    TrainConfig(num_epochs=1, batch_size=256, eval_negatives=10, use_amp=False))
    assert len(data.frames["train"]) > 1000 and np.isfinite(history[-1]["val_roc_auc"])


def test_jobs_posted_live_train_with_their_fields(market, tmp_path):
    """Day 2: users applied to jobs posted through POST /jobs. The live catalog beside the event log is applied
    to the jobs table (added, replaced, expired), so those events train with the jobs' fields, not as unknown
    jobs."""
    from convfm.store.live_catalog import CatalogStore

    root, _, _, _ = market
    live = tmp_path / "live"
    first = pd.read_csv(root / "jobs.csv", dtype=str).iloc[0]
    posted = int(pd.Timestamp("2024-03-01").value // 1000)
    store = CatalogStore(live)
    store.append(upsert=[{"job_id": "j-new", "title": "Data Engineer", "skills": ["python", "sql"],
                          "location": "Berlin", "posted_at": posted}], now=posted)
    store.append(upsert=[{"job_id": first["job_id"], "title": "Renamed", "posted_at": posted}],
                 expire=["j000002"], now=posted + 1)
    EventLog.open(live / "events").append([{"event_id": "a1", "type": "apply", "user_id": "u-new",
                                           "job_id": "j-new", "timestamp": iso(parse_time("2024-03-02"))}])
    loaded = load_job_market(DataConfig(path=str(root), events=str(live / "events")))
    jobs = loaded.jobs.set_index("job_id")
    assert jobs.loc["j-new", "title"] == "Data Engineer" and jobs.loc["j-new", "skills"] == "python;sql"
    assert jobs.loc["j-new", "posted_at"] == pd.Timestamp("2024-03-01")
    assert jobs.loc[first["job_id"], "title"] == "Renamed" and jobs.index.is_unique
    own = pd.Timestamp(pd.read_csv(root / "jobs.csv").set_index("job_id").loc["j000002", "expires_at"])
    expired = pd.Timestamp("2024-03-01") + pd.Timedelta(microseconds=1)
    assert jobs.loc["j000002", "expires_at"] == min(own, expired)  # closed then, or sooner by its own expiry
    assert len(jobs) == len(pd.read_csv(root / "jobs.csv")) + 1
    assert "catalog" in loaded.source["jobs"]
    assert {k: loaded.live_catalog[k] for k in ("version", "added", "replaced", "expired")} == {
        "version": 2, "added": 1, "replaced": 1, "expired": 1}
    data = prepare_data(DataConfig(path=str(root), events=str(live / "events")))  # it crashed on the oracle
    assert data.oracle is None and "j-new" in set(data.catalog) and data.live_catalog["version"] == 2


def test_a_resumed_run_reads_the_log_and_the_live_catalog_its_first_start_read(market, tmp_path):
    from convfm.store.live_catalog import CatalogStore

    _, jobs_only, log, _ = market
    shutil.copytree(log, tmp_path / "live" / "events")
    config = DataConfig(path=str(jobs_only), events=str(tmp_path / "live" / "events"))
    store = CatalogStore(tmp_path / "live")
    store.append(upsert=[{"job_id": "j-first", "title": "Data Engineer", "skills": ["sql"], "location": "Berlin"}])
    first = load_job_market(config)
    EventLog.open(config.events).append([{"event_id": "after", "type": "apply", "user_id": "u-late",
                                          "job_id": "j-first", "timestamp": "2030-01-01T00:00:00.000000Z"}])
    store.append(upsert=[{"job_id": "j-second", "title": "Analyst", "skills": ["excel"], "location": "Paris"}])
    read = {"event_log": first.event_log, "live_catalog": first.live_catalog}
    again = load_job_market(config, read_before=read)
    assert (again.event_log, again.live_catalog) == (first.event_log, first.live_catalog)
    assert len(again.interactions) == len(first.interactions) and "j-second" not in set(again.jobs["job_id"])
    now = load_job_market(config)  # a new run reads everything
    assert len(now.interactions) == len(first.interactions) + 1 and "j-second" in set(now.jobs["job_id"])
    assert load_job_market(config, read_before={"live_catalog": None}).live_catalog is None  # it held no delta
    (tmp_path / "live" / "events" / first.event_log["last_segment"]).unlink()
    with pytest.raises(DataValidationError, match="up to segment .* which it no longer holds: the resumed run"):
        load_job_market(config, read_before=read)


def test_what_a_resume_pins_comes_from_its_record(caplog):
    from convfm.data.prepare import data_reads, first_reads

    caplog.set_level(logging.WARNING, logger="convfm.data.prepare")  # a Ray test run before may have changed it
    config, read = DataConfig(events="live/events"), {"last_segment": "x", "segments": 3}
    record = {**data_reads(types.SimpleNamespace(event_log=read, live_catalog=None)), "status": "running"}
    assert first_reads(record, config, "run r") == {"event_log": read, "live_catalog": None}
    assert first_reads(record, DataConfig(), "run r") is None  # no event log: nothing to pin
    assert first_reads({"live_catalog": None}, config, "run old") is None  # written before reads were kept
    assert "run old was started before its reads of the event log were recorded" in caplog.text
