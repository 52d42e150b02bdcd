"""A model with the job-popularity feature in the Scorer (no Ray): logged positives count at once, in every
later answer's scores, as the full forward at that time computes them; other event types do not."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from convfm.config import DataConfig, ModelConfig
from convfm.data.prepare import prepare_data
from convfm.model.network import ConvFM
from convfm.store.artifacts import save_model_dir
from convfm.store.event_log import iso
from convfm.store.serving_data import serving_extra_json
from serve.events import LiveEvents
from serve.schemas import ScoreRequest
from serve.scorer import Scorer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_dir(market_dir, tmp_path_factory, randomize):
    data = prepare_data(DataConfig(path=str(market_dir), popularity_days=7))
    model = randomize(ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(6,)),
                             data.extractor.feature_map), 11)
    return save_model_dir(tmp_path_factory.mktemp("popular") / "model", model, data.extractor,
                          extra_json={**serving_extra_json(data), "data_config": data.config.to_dict()})


def records(kind: str, job: str, when: dt.datetime, n: int) -> list[dict]:
    return [{"event_id": f"{kind}-{job}-{i}", "type": kind, "user_id": f"fan{i}", "job_id": job,
             "timestamp": iso(when)} for i in range(n)]


def test_logged_applies_move_a_jobs_popularity_and_score(model_dir, monkeypatch):
    scorer = Scorer.load(model_dir)
    assert "job_popularity" in [f.name for f in scorer.extractor.feature_map.fields]
    now = scorer.model_jobs.data_end + 3_600_000_000  # an hour after the data's end, while its jobs are open
    assert scorer.model_jobs.time(now) == now
    monkeypatch.setattr("serve.scorer.now_micros", lambda: now)
    scorer.live = LiveEvents()
    user = scorer.extractor.user_ids[1]
    hot, viewed, quiet = scorer.extractor.job_ids[1:4]
    request = ScoreRequest(user_id=user, job_ids=[hot, viewed, quiet])
    before = [s["score"] for s in scorer.score_many([request])[0]["scores"]]
    rows = np.array([scorer.extractor.job_rows[j] for j in (hot, viewed, quiet)])
    counted = scorer.extractor.popularity.counts(rows, now)  # the training data's last week
    a_minute_ago = dt.datetime.fromtimestamp(now / 1e6, dt.timezone.utc) - dt.timedelta(minutes=1)
    scorer.live.add("segment-1", records("apply", hot, a_minute_ago, 6) + records("view", viewed, a_minute_ago, 6))
    monkeypatch.setattr("serve.scorer.now_micros", lambda: now + 1)  # (a request's time moves on)
    after = [s["score"] for s in scorer.score_many([request])[0]["scores"]]
    assert after[0] != pytest.approx(before[0], abs=1e-6)  # six applies: another bucket
    assert after[1:] == pytest.approx(before[1:], abs=1e-6)  # views are not positives
    assert (scorer.extractor.popularity.counts(rows, now) - counted).tolist() == [6, 0, 0]
    extractor = scorer.extractor
    users = extractor.user_side(extractor.user_catalog.take([1]), np.array([user]))
    full = torch.sigmoid(scorer.ranker.full_scores(users, rows)[0]).numpy()
    assert after == pytest.approx(full.tolist(), abs=1e-6)
    scorer.live.add("segment-1", records("apply", hot, a_minute_ago, 6))  # a segment applied twice counts once
    scorer.score_many([request])
    assert (scorer.extractor.popularity.counts(rows[:1], now) - counted[:1]).tolist() == [6]


def test_a_replayed_logs_popularity_stays_as_the_log_left_it(model_dir):
    """Held at its data's end (every job of the 2024 market closed by now), the model's jobs' popularity window is
    the log's last days: positives logged now, later than it, do not enter it (nor pile up in it for ever)."""
    scorer = Scorer.load(model_dir)
    end = scorer.model_jobs.data_end
    assert scorer.model_jobs.time(int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6)) == end
    scorer.live = LiveEvents()
    hot = scorer.extractor.job_ids[1]
    request = ScoreRequest(user_id=scorer.extractor.user_ids[1], job_ids=[hot])
    before = scorer.score_many([request])[0]["scores"]
    assert scorer.ranker.version == 0  # built at the data's end: the first request recomputed no job
    an_hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    counted = scorer.extractor.popularity.counts(np.array([1]), end)
    scorer.live.add("segment-1", records("apply", hot, an_hour_ago, 6))
    assert scorer.score_many([request])[0]["scores"] == before and scorer.ranker.recency.hold_time == end
    assert (scorer.extractor.popularity.counts(np.array([1]), end) == counted).all()
