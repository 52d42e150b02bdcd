"""Scorer and ModelSlot without Ray: batched answers, fallbacks, filters, and reloads that fail safely."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.store.artifacts import save_model_dir
from convfm.model.network import ConvFM
from serve.schemas import RecommendRequest, ScoreRequest
from serve.model_slot import ModelSlot
from serve.replies import ServiceError
from serve.scorer import Scorer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scorer(tiny) -> Scorer:
    return Scorer.load(tiny.entry / "v0001")


def rec(**body) -> RecommendRequest:
    return RecommendRequest.model_validate(body)


def test_identity_and_info(scorer, tiny):
    info = scorer.info()
    assert (info["name"], info["version"]) == ("tiny", "v0001")
    assert info["jobs"] == 300 and info["fields"][0] == "user_id" and "val_roc_auc" in info["metrics"]


def test_a_batch_answers_like_single_requests(scorer, tiny):
    users = list(tiny.data.frames["train"]["user_id"].unique()[:4])
    requests = [rec(user_id=u, k=7) for u in users] + [
        rec(profile={"skills": ["python", "sql"]}, k=3), rec(user_id="stranger", k=2),
        rec(user_id=users[0], k=5, filters={"job_type": "contract"})]
    together = scorer.recommend_many(requests)
    for request, batched in zip(requests, together):
        alone = scorer.recommend_many([request])[0]
        assert [i["job_id"] for i in alone["items"]] == [i["job_id"] for i in batched["items"]]
        assert [i["score"] for i in alone["items"]] == pytest.approx([i["score"] for i in batched["items"]], abs=1e-6)


def test_scores_are_the_models_probabilities(scorer, tiny):
    user = tiny.data.frames["train"]["user_id"].iloc[0]
    job_ids = tiny.data.extractor.job_ids[1:30]
    result = scorer.score_many([ScoreRequest(user_id=user, job_ids=job_ids)])[0]
    extractor = tiny.data.extractor
    users = extractor.user_side(extractor.user_catalog.take([extractor.user_rows[user]]), np.array([user]))
    expected = torch.sigmoid(scorer.ranker.full_scores(users, np.arange(1, 30))[0]).numpy()
    assert [s["score"] for s in result["scores"]] == pytest.approx(expected.tolist(), abs=1e-6)


def test_recommendations_skip_seen_jobs_and_honour_filters(scorer, tiny):
    user = tiny.data.frames["train"]["user_id"].value_counts().index[0]
    seen = set(tiny.data.seen.query("user_id == @user")["job_id"])  # interacted with: not sampled negatives
    assert len(scorer.seen[user]) == len(seen) < len(tiny.data.frames["train"].query("user_id == @user"))
    everything = {"include_expired": True}  # (the 2024 market: read at its data's end, many jobs had closed)
    items = scorer.recommend_many([rec(user_id=user, k=100, filters=everything)])[0]["items"]
    assert len(items) == min(100, 300 - len(seen)) and not {i["job_id"] for i in items} & seen
    items = scorer.recommend_many([rec(user_id=user, k=100, filters={**everything, "experience_level": "Senior",
                                                                        "salary_min": 150000})])[0]["items"]
    assert items and all(i["experience_level"] == "senior" and i["salary_max"] >= 150000 for i in items)


def test_a_filter_on_a_column_the_model_lacks_is_a_422(scorer):
    values = scorer.filter_values.pop("job_type")
    try:
        [result] = scorer.recommend_many([rec(user_id="x", filters={"job_type": "contract"})])
    finally:
        scorer.filter_values["job_type"] = values
    assert isinstance(result, ServiceError) and result.status == 422 and "job_type" in result.detail


def test_unknown_job_is_404(scorer):
    with pytest.raises(ServiceError, match="unknown job id 'nope'") as info:
        scorer.job("nope")
    assert info.value.status == 404


def test_model_without_serving_json_still_serves(tiny, tmp_path):
    bare = save_model_dir(tmp_path / "bare", tiny.model, tiny.data.extractor, metrics={"val_roc_auc": float("nan")})
    scorer = Scorer.load(bare)
    assert scorer.version.startswith("sha-") and scorer.info()["metrics"]["val_roc_auc"] is None
    [popular] = scorer.recommend_many([rec(user_id="stranger", k=3)])
    assert popular["fallback"] == "popular" and len(popular["items"]) == 3
    assert scorer.seen == {} and "title" not in popular["items"][0]
    # display columns come from the encoded catalog (normalised case), so filters still work
    [filtered] = scorer.recommend_many([rec(user_id="stranger", k=5, filters={"location": "Remote"})])
    assert filtered["items"] and all(i["location"] == "remote" for i in filtered["items"])


def copy_entry(tiny, tmp_path):
    entry = tmp_path / "registry" / "tiny"
    shutil.copytree(tiny.entry, entry)
    return entry


def test_failed_reloads_keep_the_serving_model(tiny, tmp_path, break_version):
    entry = copy_entry(tiny, tmp_path)
    slot = ModelSlot(entry)
    assert slot.health()[0] == 503 and slot.load()["ok"] and slot.health() == (
        200, {"status": "ok", "model": "tiny", "version": "v0001"})
    broken = break_version(entry)
    report = slot.load(broken)
    assert not report["ok"] and "weights.pt" in report["error"] and slot.current.version == "v0001"
    for bad, message in (("v0042", "no such version"), ("../../etc", "must look like v0001")):
        report = slot.load(bad)
        assert not report["ok"] and message in report["error"] and slot.current.version == "v0001"
    assert slot.info()["last_reload"]["requested"] == "../../etc"


def test_a_model_with_nan_weights_fails_validation(tiny, tmp_path):
    entry = copy_entry(tiny, tmp_path)
    poisoned = ConvFM(tiny.model.config, tiny.model.feature_map)
    poisoned.load_state_dict(tiny.model.state_dict())
    with torch.no_grad():
        poisoned.deep.mlp[0].weight[0, 0] = float("nan")
    from convfm.store.registry import publish

    version = publish(save_model_dir(tmp_path / "nan", poisoned, tiny.data.extractor), entry.parent, "tiny").name
    slot = ModelSlot(entry / "v0001")  # a version dir: its siblings are reachable by name
    assert slot.load()["ok"]
    report = slot.load(version)
    assert not report["ok"] and "non-finite" in report["error"] and slot.current.version == "v0001"


def test_first_load_failure_is_reported_by_health(tmp_path):
    slot = ModelSlot(tmp_path / "missing")
    assert not slot.load()["ok"]
    status, body = slot.health()
    assert status == 503 and body["status"] == "failed" and "missing" in slot.error  # the why: in the log only
    with pytest.raises(ServiceError, match="failed to load"):
        slot.require()


def test_versions_need_a_registry(tiny):
    report = ModelSlot(tiny.model_dir).load("v0001")
    assert not report["ok"] and "not a registry entry" in report["error"]


def test_a_stranger_with_a_history_is_scored_from_it_and_the_why_cites_it(scorer, tiny):
    past = tiny.data.extractor.job_ids[1:3]
    stranger = scorer.recommend_many([rec(user_id="stranger", history=past, k=5, explain=True)])[0]
    assert stranger["fallback"] is None and stranger["cold_start"] is True
    assert not {i["job_id"] for i in stranger["items"]} & set(past)  # the history counts as seen
    cited = [i["explanation"]["similar_to"] for i in stranger["items"]]
    assert all(c is not None and c["job_id"] in past and -1.0 <= c["similarity"] <= 1.0 for c in cited)
    assert any(i["why"].startswith("similar to a job you applied to: ") for i in stranger["items"])
    other = scorer.recommend_many([rec(user_id="stranger", history=tiny.data.extractor.job_ids[40:43], k=5)])[0]
    assert [i["score"] for i in other["items"]] != [i["score"] for i in stranger["items"]]  # history matters
    popular = scorer.recommend_many([rec(user_id="stranger", k=5)])[0]
    assert popular["fallback"] == "popular"


def test_every_history_job_counts_as_seen_not_only_the_last_history_length(scorer, tiny):
    top = [i["job_id"] for i in scorer.recommend_many([rec(user_id="stranger", history=["x"], k=60)])[0]["items"]]
    history = top[:50]  # more than the 20 the features read
    assert scorer.extractor.history_length < len(history)
    answer = scorer.recommend_many([rec(user_id="stranger", history=history, k=100)])[0]
    assert not {i["job_id"] for i in answer["items"]} & set(history)


def test_the_why_cites_the_profile_match_only_where_the_job_is_in_the_users_location(scorer, tiny):
    city = scorer.extractor.vocabs["location"].values[0]
    local = scorer.recommend_many([rec(profile={"location": city}, k=5, explain=True, filters={"location": city})])[0]
    assert local["items"] and all(i["location"].lower() == city and i["explanation"]["profile_match"] is not None
                                  and "fits your profile (" in i["why"] for i in local["items"])
    nowhere = scorer.recommend_many([rec(profile={"skills": ["python"]}, k=5, explain=True)])[0]  # no location
    assert nowhere["items"] and all(i["explanation"]["profile_match"] is None and "your location" not in i["why"]
                                    for i in nowhere["items"])


def test_a_known_user_is_scored_with_the_stored_history(scorer, tiny):
    extractor = tiny.data.extractor
    user = extractor.history.users[int(np.argmax(np.diff(extractor.history.offsets)))]  # the longest history
    stored = scorer.recommend_many([rec(user_id=user, k=5, exclude_seen=False, explain=True)])[0]
    given = scorer.recommend_many([rec(user_id=user, k=5, exclude_seen=False, history=["nonexistent-job"])])[0]
    assert [i["score"] for i in stored["items"]] != [i["score"] for i in given["items"]]
    assert all(i["explanation"]["similar_to"] is not None for i in stored["items"])


def test_history_is_validated_by_the_schema():
    with pytest.raises(ValueError, match="history"):
        rec(user_id="u", history=["j"] * 201)
    with pytest.raises(ValueError, match="give user_id, profile or history"):
        rec(history=[])
    assert rec(history=["j1", 7]).history == ["j1", "7"]


def test_kept_scans_answer_as_fresh_ones(scorer, tiny):
    """A scorer that keeps users' scans (the service's default) answers every request as one that keeps none:
    repeats are hits, a request with its own history is another entry, and moving time rescores changed rows."""
    kept = Scorer.load(tiny.entry / "v0001", score_cache_mib=1)
    users = list(tiny.data.frames["train"]["user_id"].unique()[:3])
    history = list(tiny.data.extractor.job_ids[1:3])
    requests = [rec(user_id=u, k=8) for u in users] + [rec(user_id=users[0], k=8, history=history),
                                                        rec(user_id=users[1], k=3, filters={"job_type": "contract"})]
    for _ in range(2):
        for request in requests:
            fresh, cached = scorer.recommend_many([request])[0], kept.recommend_many([request])[0]
            assert [i["job_id"] for i in cached["items"]] == [i["job_id"] for i in fresh["items"]]
            assert [i["score"] for i in cached["items"]] == pytest.approx([i["score"] for i in fresh["items"]],
                                                                          abs=1e-6)
    info = kept.info()["score_cache"]
    assert info["entries"] == 4 and info["misses"] == 4 and info["hits"] == 6 and info["budget_mib"] == 1
    assert scorer.info()["score_cache"]["entries"] == 0  # Scorer.load keeps none unless asked


def test_the_models_jobs_leave_recommendations_at_their_training_datas_expiry(tiny, monkeypatch):
    """A daily-trained model's jobs expire while it serves: past their data's expiry they are not recommended,
    and GET /jobs/{id} says so; a job the live catalog replaces takes its expiry from there. Once every one has
    expired (an old log), they are read at the end of the model's data: its jobs' ages and expiry as they stood
    then (``model_time``). The rule reads the request's time, so every replica, whenever it loaded, answers
    alike."""
    from convfm.data.liveness import NEVER
    from serve import scorer as scorer_module
    from serve.live_catalog import job_detail

    served = Scorer.load(tiny.entry / "v0001")
    expires = served.ranker.recency.expires[1: served.n_jobs]
    assert (expires < NEVER).all()  # every job of the tiny market has a window
    now = int(np.median(expires))  # half the jobs expired by then
    monkeypatch.setattr(scorer_module, "now_micros", lambda: now)
    monkeypatch.setattr("serve.live_catalog.now_micros", lambda: now)
    assert served.info()["model_jobs_expire"]
    user = tiny.data.frames["train"]["user_id"].iloc[0]
    items = served.recommend_many([rec(user_id=user, k=100)])[0]["items"]
    rows = [served.extractor.job_rows[i["job_id"]] for i in items]
    assert 0 < len(items) < 100 and (served.ranker.recency.expires[rows] > now).all()  # only live ones
    assert served.info()["open_jobs"] == (expires > now).sum() < served.info()["jobs"]  # GET /model tells
    gone = int(1 + np.argmin(expires))
    detail = job_detail(served, served.extractor.job_ids[gone])
    assert detail["expired"] and detail["expires_at"] is not None
    everything = served.recommend_many([rec(user_id=user, k=100, filters={"include_expired": True})])[0]["items"]
    assert any(served.ranker.recency.expires[served.extractor.job_rows[i["job_id"]]] <= now for i in everything)
    assert served.info()["model_time"] is None  # now
    later = int(expires.max()) + 1
    monkeypatch.setattr(scorer_module, "now_micros", lambda: later)
    monkeypatch.setattr("serve.live_catalog.now_micros", lambda: later)
    end = served.model_jobs.data_end
    assert end < later and served.model_jobs.time(later) == end and served.info()["model_jobs_expire"]
    assert served.info()["model_time"] == pd.Timestamp(end * 1000, tz="UTC").isoformat()
    items = served.recommend_many([rec(user_id=user, k=100)])[0]["items"]
    rows = [served.extractor.job_rows[i["job_id"]] for i in items]
    open_then = (expires > end).sum() - len(set(served.seen[user]) & set(np.flatnonzero(expires > end) + 1))
    assert len(items) == min(100, open_then)
    assert (served.ranker.recency.expires[rows] > end).all()  # open at the data's end
    recency = served.ranker.recency  # ages read then, not 0-for-all "121d+"; the clock itself moves on
    assert served.ranker.time == later and recency.hold_time == end
    np.testing.assert_array_equal(served.ranker.buckets, recency.rows(np.arange(served.n_jobs), end))
    assert not job_detail(served, items[0]["job_id"])["expired"]
    assert job_detail(served, served.extractor.job_ids[gone])["expired"]  # closed before the data's end
    monkeypatch.setattr(scorer_module, "now_micros", lambda: now)
    served.put_jobs(np.array([gone]))  # the live catalog replaced it (no expiry given there)
    assert not job_detail(served, served.extractor.job_ids[gone])["expired"]
    served.put_jobs(np.arange(1, served.n_jobs))  # the live catalog replaced them all: its clock, now, holds
    assert served.model_jobs.time(later) == later and not served.model_jobs.expiry_applies(later)


def test_live_jobs_follow_the_clock_and_close_after_the_lifetime_while_a_replayed_log_is_held(tiny, monkeypatch):
    """Under a replayed log's clock (every model job closed by now) a job the live catalog posts without an
    expiry closes ``job_lifetime_days`` after its posting, as training reads such a job; its age is read at now
    and grows with it, while the model's jobs stay at the data's end. Scores stay the model's exact logits."""
    from convfm.data.liveness import MICROS_PER_DAY as DAY
    from convfm.model.ranking import CatalogRanker
    from convfm.store.live_catalog import Delta
    from serve import scorer as scorer_module
    from serve.live_catalog import apply_deltas, job_detail

    served = Scorer.load(tiny.entry / "v0001")
    recency, n = served.ranker.recency, served.n_jobs
    later = int(recency.expires[1:n].max()) + 30 * DAY
    clock = {"now": later}
    monkeypatch.setattr(scorer_module, "now_micros", lambda: clock["now"])
    monkeypatch.setattr("serve.live_catalog.now_micros", lambda: clock["now"])
    end = served.model_jobs.data_end
    posted, user = later - 3 * DAY, tiny.data.frames["train"]["user_id"].iloc[0]
    apply_deltas(served, [Delta(1, later, ({"job_id": "fresh", "title": "data engineer", "skills": ["python"],
                                           "job_type": "internship-only-here", "posted_at": posted},))])
    only_fresh = rec(user_id=user, k=5, filters={"job_type": "internship-only-here"})
    row = served.extractor.job_rows["fresh"]
    assert job_detail(served, "fresh")["expires_at"] == pd.Timestamp((posted + 30 * DAY) * 1000, tz="UTC").isoformat()
    users = served.extractor.user_side(served.extractor.user_catalog.take([served.extractor.user_rows[user]]),
                                       np.array([user], dtype=object))
    held = np.arange(n)
    for days in (0, 2, 26):  # 3, 5 and 29 days old: "2-4d", "4-8d", "15-31d"
        clock["now"] = later + days * DAY
        ids = [i["job_id"] for i in served.recommend_many([only_fresh])[0]["items"]]
        assert ids == ["fresh"] and served.ranker.time == clock["now"]
        assert served.ranker.buckets[row] == recency.rows(np.array([row]), clock["now"])[0]
        assert served.ranker.buckets[row] != recency.rows(np.array([row]), end)[0]  # not read at the data's end
        np.testing.assert_array_equal(served.ranker.buckets[held], recency.rows(held, end))
        reference = CatalogRanker(served.ranker.model, served.extractor, time=clock["now"]).full_scores(users)
        torch.testing.assert_close(served.ranker.score_all(users), reference, atol=1e-5, rtol=0)
    clock["now"] = posted + 30 * DAY
    assert job_detail(served, "fresh")["expired"]
    assert served.recommend_many([only_fresh])[0]["items"] == []


def test_a_models_data_end_is_its_last_positive_else_its_last_posting():
    from convfm.data.liveness import ALWAYS
    from serve.model_jobs import data_end as _data_end

    posted = np.array([ALWAYS, 5, 9], dtype=np.int64)
    assert _data_end(np.array([3, 7], dtype=np.int64), posted) == 7
    assert _data_end(np.zeros(0, dtype=np.int64), posted) == 9  # no history features kept
    assert _data_end(np.array([3], dtype=np.int64), None) is None  # no job calendar: ranked at now
    assert _data_end(np.zeros(0, dtype=np.int64), np.array([ALWAYS], dtype=np.int64)) is None


def test_history_ids_the_catalog_does_not_know_are_named(scorer, tiny):
    known = tiny.data.extractor.job_ids[1]
    result = scorer.recommend_many([rec(user_id="stranger", history=["gone-123", known], k=3)])[0]
    assert result["cold_start"] and result["unknown_history"] == ["gone-123"] and len(result["items"]) == 3
    assert scorer.recommend_many([rec(user_id="stranger", history=[known], k=3)])[0]["unknown_history"] == []


def test_a_catalog_mostly_closed_is_answered_from_its_open_jobs_alone_as_from_the_whole(tiny, monkeypatch):
    """Half the model's jobs closed: the scorer scans the open ones (``convfm.model.open_rows``), with kept
    scans or none, and answers every request, filters, expired jobs and batches included, as a full scan does."""
    from serve import scorer as scorer_module

    probe = Scorer.load(tiny.entry / "v0001")
    expires = probe.ranker.recency.expires[1: probe.n_jobs]
    now = int(np.median(expires))
    monkeypatch.setattr(scorer_module, "now_micros", lambda: now)
    monkeypatch.setattr("serve.live_catalog.now_micros", lambda: now)
    users = list(tiny.data.frames["train"]["user_id"].unique()[:3])
    requests = [rec(user_id=users[0], k=20), rec(user_id=users[1], k=5, filters={"job_type": "contract"}),
                rec(user_id=users[2], k=20, filters={"include_expired": True}), rec(user_id=users[0], k=20)]

    def answers(view: bool, mib: int) -> list:
        monkeypatch.setattr("convfm.model.open_rows.OPEN_SHARE_FOR_VIEW", 0.75 if view else 0.0)
        served = Scorer.load(tiny.entry / "v0001", score_cache_mib=mib)
        out = [served.recommend_many([r])[0] for r in requests] + served.recommend_many(requests[:2])
        out += served.recommend_many(requests)  # one request asks for expired jobs: the whole catalog for all
        return [[(i["job_id"], i["score"]) for i in a["items"]] for a in out], served.ranker._view

    full, no_view = answers(view=False, mib=1)
    assert no_view is None
    for mib in (0, 1):
        got, view = answers(view=True, mib=mib)
        assert view is not None and 0 < len(view.rows) < 0.75 * probe.n_jobs
        assert [[j for j, _ in items] for items in got] == [[j for j, _ in items] for items in full]
        assert [s for items in got for _, s in items] == pytest.approx([s for items in full for _, s in items],
                                                                       abs=1e-6)
