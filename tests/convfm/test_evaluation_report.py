"""convfm.evaluation.report: both protocols on the small synthetic market, report sections and the text table."""
import dataclasses

import numpy as np
import pytest
import torch

from convfm.cli.main import build_parser
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.errors import ConfigError
from convfm.evaluation.metrics import held_out_last_positive, ranking_metrics, sample_ranking_candidates
from convfm.evaluation.report import evaluate_split, format_report, model_scorer, score_pairs
from convfm.model.network import ConvFM

RANKING = ["hr@10", "ndcg@10", "mrr", "coverage@10", "mean_age_days", "events"]


class TruthOracle:
    """Test double for PreparedData.oracle: the truth table's p_positive per (user, job), 0 for pairs it lacks."""

    def __init__(self, truth) -> None:
        self.table = dict(zip(zip(truth["user_id"], truth["job_id"]), truth["p_positive"]))

    def score(self, user_ids: np.ndarray, job_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.array([[self.table.get((u, j), 0.0) for j in row] for u, row in zip(user_ids, job_ids)])


@pytest.fixture(scope="module")
def data(market_dir):
    prepared = prepare_data(DataConfig(path=str(market_dir), job_lifetime_days=120.0))
    return dataclasses.replace(prepared, oracle=TruthOracle(prepared.truth))


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return ConvFM(ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8)), data.extractor.feature_map).eval()


@pytest.fixture(scope="module")
def live_report(model, data):
    return evaluate_split(model, data, "test", max_events=50)


def test_live_report_names_its_protocol_and_every_method(live_report, data):
    protocol = live_report["protocol"]
    assert protocol["name"] == "live" and protocol["events"] == 50
    assert set(protocol["skipped"]) == {"not_in_catalog", "not_live", "no_candidates"}
    assert protocol["positives"] == int((data.frames["test"]["label"] > 0).sum())
    assert protocol["positives"] - sum(protocol["skipped"].values()) >= 50  # sampled down to max_events
    assert 1 < protocol["mean_live_jobs"] <= len(data.catalog)
    assert protocol["description"].startswith("each positive vs every job live at its time")
    for method in ("model", "popularity", "recent_popularity", "newest", "oracle"):
        section = live_report[method]
        assert [key for key in RANKING if key in section] == RANKING, method
        assert 0 <= section["hr@10"] <= 1 and 0 < section["mrr"] <= 1 and 0 < section["coverage@10"] <= 1
        assert section["ndcg@10"] <= section["hr@10"] and section["events"] == 50
    assert "roc_auc" in live_report["model"] and "roc_auc" in live_report["popularity"]
    assert not {"log_loss", "accuracy"} & set(live_report["popularity"])  # a popularity score is no probability
    assert live_report["oracle_auc"] is not None


def test_the_oracle_beats_chance_and_newest_recommends_the_freshest(live_report):
    assert live_report["oracle"]["mrr"] > live_report["popularity"]["mrr"]
    ages = {m: live_report[m]["mean_age_days"] for m in ("model", "popularity", "recent_popularity", "oracle")}
    assert all(live_report["newest"]["mean_age_days"] < age for age in ages.values()), ages


def test_format_report_prints_the_protocol_then_one_column_per_method(live_report):
    lines = format_report(live_report).splitlines()
    assert lines[0].startswith("protocol: live: each positive vs every job live at its time")
    assert lines[1].split() == ["metric", "model", "popularity", "recent_popularity", "newest", "oracle"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["roc_auc"][2:4] == ["-", "-"] and rows["roc_auc"][4] == f"{live_report['oracle_auc']:.4f}"
    assert rows["events"] == ["50"] * 5


def test_without_posting_dates_there_is_no_newest_first_baseline(model, data):
    """Every job equally new ranks in catalog order: a column of zeros that reads like a measured baseline."""
    from convfm.data.liveness import ALWAYS, JobWindows

    undated = JobWindows(data.windows.job_ids, np.full(len(data.windows.start), ALWAYS), data.windows.end)
    undated_data = dataclasses.replace(data, windows=undated)  # with a memo of its own
    report = evaluate_split(model, undated_data, "test", max_events=50)
    assert "newest" not in report and "popularity" in report and "model" in report


def test_a_metric_that_cannot_be_computed_prints_as_a_dash():
    table = format_report({"model": {"roc_auc": float("nan"), "hr@10": 0.25, "events": 3}}).splitlines()
    assert table[2].split() == ["roc_auc", "-"] and table[3].split() == ["hr@10", "0.2500"]
    assert table[4].split() == ["events", "3"]


def test_a_validation_copy_reports_the_same(model, data, live_report):
    copy = data.for_split("test")
    assert copy.oracle is data.oracle and copy.positives is not None
    assert evaluate_split(model, copy, "test", max_events=50) == live_report


def test_sampled_protocol_is_unchanged(model, data):
    report = evaluate_split(model, data, "test", protocol="sampled", negatives=20)
    assert report["protocol"]["name"] == "sampled" and "recent_popularity" not in report
    held_out = held_out_last_positive(data.frames["test"])
    users, job_ids, _ = sample_ranking_candidates(held_out, data.seen, data.catalog, 20, seed=0)  # interacted
    times = held_out["timestamp"].to_numpy()
    expected = ranking_metrics(score_pairs(model, data, users, job_ids, 4096, torch.device("cpu"), times), 10)
    assert {key: report["model"][key] for key in expected} == expected
    assert report["protocol"]["users"] == expected["users"] == len(held_out)
    assert format_report(report).splitlines()[0] == (
        f"protocol: sampled: last positive per user vs 20 sampled unseen jobs, {len(held_out)} users")


def test_the_fast_model_path_scores_as_the_forward_does(model, data):
    test = data.frames["test"].sort_values("timestamp")
    users, times, codes = test["user_id"].to_numpy()[:3], test["timestamp"].to_numpy()[:3], np.arange(0, len(data.catalog), 7)
    fast = model_scorer(model, data, 4096, torch.device("cpu"))(users, times, codes)
    forward = score_pairs(model, data, users, np.broadcast_to(data.catalog[codes], (3, len(codes))), 4096,
                          torch.device("cpu"), times)
    assert np.allclose(1 / (1 + np.exp(-fast)), forward, atol=1e-5)


def test_bad_protocol_and_max_events(model, data):
    with pytest.raises(ValueError, match="protocol must be one of .*'live', 'sampled'.*got 'all'"):
        evaluate_split(model, data, "test", protocol="all")
    with pytest.raises(ConfigError, match="max_events"):
        evaluate_split(model, data, "test", max_events=0)


def test_train_config_and_cli_name_the_protocol():
    assert TrainConfig().eval_protocol == "live" and TrainConfig(eval_protocol="sampled").eval_max_events == 1000
    with pytest.raises(ConfigError, match="eval_protocol"):
        TrainConfig(eval_protocol="all")
    with pytest.raises(ConfigError, match="eval_max_events"):
        TrainConfig(eval_max_events=0)
    args = build_parser().parse_args(["evaluate", "--model", "m", "--protocol", "sampled", "--negatives", "20"])
    assert (args.protocol, args.negatives, args.max_events) == ("sampled", 20, 5000)
    assert build_parser().parse_args(["evaluate", "--model", "m"]).protocol is None  # training's protocol
