"""Golden values for convfm.evaluation.metrics: ranks by hand, classification against sklearn, sampler invariants."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from convfm.errors import ArtifactError, ConfigError, DataValidationError
from convfm.evaluation.metrics import (
    PopularityBaseline,
    classification_metrics,
    held_out_last_positive,
    positive_ranks,
    ranking_metrics,
    sample_ranking_candidates,
)
from convfm.evaluation.report import format_report

CLASSIFICATION_KEYS = [
    "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "positive_rate", "count"
]


class TestClassificationMetrics:
    def test_matches_sklearn_on_random_data(self) -> None:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 500)
        scores = np.clip(0.3 * labels + 0.7 * rng.random(500), 0.0, 1.0)
        got = classification_metrics(labels, scores, threshold=0.4)
        predicted = (scores >= 0.4).astype(int)
        assert list(got) == CLASSIFICATION_KEYS
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
        assert got["precision"] == pytest.approx(skm.precision_score(labels, predicted))
        assert got["recall"] == pytest.approx(skm.recall_score(labels, predicted))
        assert got["f1"] == pytest.approx(skm.f1_score(labels, predicted))
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
        assert got["log_loss"] == pytest.approx(skm.log_loss(labels, scores))
        assert got["positive_rate"] == pytest.approx(labels.mean())
        assert got["count"] == 500

    def test_golden_small_case(self) -> None:
        got = classification_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.6, 0.4, 0.1]))
        # predictions 1,1,0,0: TP=1 FP=1 FN=1 TN=1
        assert got["accuracy"] == 0.5 and got["precision"] == 0.5 and got["recall"] == 0.5
        assert got["roc_auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
        expected_loss = -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4
        assert got["log_loss"] == pytest.approx(expected_loss)

    def test_single_class_auc_is_nan_and_zero_division_is_zero(self) -> None:
        got = classification_metrics(np.zeros(5), np.full(5, 0.2))
        assert math.isnan(got["roc_auc"])
        assert got["precision"] == 0.0 and got["recall"] == 0.0 and got["f1"] == 0.0
        assert got["accuracy"] == 1.0 and got["positive_rate"] == 0.0

    def test_log_loss_clips_saturated_scores(self) -> None:
        got = classification_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
        assert math.isfinite(got["log_loss"]) and got["log_loss"] == pytest.approx(-math.log(1e-7))

    @pytest.mark.parametrize(
        ("labels", "scores", "match"),
        [
            ([1, 0], [0.5], "equal length"),
            ([], [], "non-empty"),
            ([1, 2], [0.5, 0.5], "labels must be 0 or 1"),
            ([1, 0], [1.5, -0.2], r"probabilities in \[0, 1\]"),
            ([1, 0], [np.nan, 0.2], "probabilities"),
        ],
    )
    def test_rejects_bad_input(self, labels: list, scores: list, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            classification_metrics(np.array(labels), np.array(scores))


class TestRankingMetrics:
    def test_golden_values(self) -> None:
        scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.9]])  # ranks 1 and 3
        np.testing.assert_allclose(positive_ranks(scores), [1.0, 3.0])
        at1 = ranking_metrics(scores, k=1)
        assert at1 == {"hr@1": 0.5, "ndcg@1": 0.5, "mrr": pytest.approx((1 + 1 / 3) / 2), "users": 2}
        at10 = ranking_metrics(scores)
        assert list(at10) == ["hr@10", "ndcg@10", "mrr", "users"]
        assert at10["hr@10"] == 1.0
        assert at10["ndcg@10"] == pytest.approx((1 + 0.5) / 2)
        assert ranking_metrics(scores, k=2)["ndcg@2"] == pytest.approx(0.5)

    def test_ties_count_half(self) -> None:
        # one candidate above, two tied: rank = 1 + 1 + 0.5 * 2 = 3
        scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
        assert positive_ranks(scores)[0] == 3.0
        got = ranking_metrics(scores, k=3)
        assert got["hr@3"] == 1.0 and got["mrr"] == pytest.approx(1 / 3)
        assert got["ndcg@3"] == pytest.approx(1 / math.log2(4))
        # half-integer ranks are not rounded: rank 2.5 misses HR@2 and enters NDCG with log2(3.5)
        half = ranking_metrics(np.array([[0.5, 0.5, 0.9]]), k=2)
        assert half["hr@2"] == 0.0 and half["ndcg@2"] == 0.0
        assert ranking_metrics(np.array([[0.5, 0.5, 0.9]]))["ndcg@10"] == pytest.approx(1 / math.log2(3.5))
        assert half["mrr"] == pytest.approx(1 / 2.5)

    def test_constant_scorer_gets_chance_not_rank_one(self) -> None:
        got = ranking_metrics(np.full((4, 101), 0.3))
        assert got["hr@10"] == 0.0 and got["mrr"] == pytest.approx(1 / 51)

    def test_matches_sort_rank_without_ties(self) -> None:
        scores = np.random.default_rng(1).random((200, 30))
        sort_rank = (np.argsort(-scores, axis=1) == 0).argmax(axis=1) + 1
        np.testing.assert_array_equal(positive_ranks(scores), sort_rank)

    def test_mask_ignores_padding(self) -> None:
        scores = np.array([[0.5, 0.9, 0.99, 0.1], [0.5, 0.4, 0.3, 0.2]])
        mask = np.array([[True, True, False, False], [True, True, True, True]])
        np.testing.assert_allclose(positive_ranks(scores, mask), [2.0, 1.0])
        padded = scores.copy()
        padded[0, 2:] = np.nan  # padding may hold anything
        np.testing.assert_allclose(positive_ranks(padded, mask), [2.0, 1.0])

    @pytest.mark.parametrize(
        ("scores", "kwargs", "match"),
        [
            (np.zeros(3), {}, r"\(U, 1\+N\)"),
            (np.zeros((0, 3)), {}, r"\(U, 1\+N\)"),
            (np.array([[np.nan, 0.1]]), {}, "finite"),
            (np.zeros((1, 2)), {"k": 0}, "k must be >= 1"),
            (np.zeros((1, 2)), {"mask": np.ones((1, 3), bool)}, "mask shape"),
            (np.zeros((1, 2)), {"mask": np.array([[False, True]])}, "column 0"),
        ],
    )
    def test_rejects_bad_input(self, scores: np.ndarray, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            ranking_metrics(scores, **kwargs)


def test_held_out_last_positive() -> None:
    examples = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c"],
        "job_id": ["j1", "j2", "j3", "j4", "j5", "j6"],
        "label": [1, 1, 0, 1, 1, 0],
        "timestamp": [1, 5, 9, 3, 3, 1],
    })
    got = held_out_last_positive(examples)
    # a: the later negative j3 is ignored; b: tie on timestamp keeps the later row; c: no positive
    assert got[["user_id", "job_id"]].values.tolist() == [["a", "j2"], ["b", "j5"]]
    assert list(got.columns) == list(examples.columns)
    with pytest.raises(DataValidationError, match=r"examples: missing column\(s\) \['timestamp'\]"):
        held_out_last_positive(examples.drop(columns="timestamp"))


def _sampler_fixture() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    catalog = np.array([f"j{i}" for i in range(30)], dtype=object)
    held_out = pd.DataFrame({"user_id": ["u0", "u1", "u2"], "job_id": ["j0", "j5", "j29"]})
    seen = pd.DataFrame({
        "user_id": ["u0", "u0", "u0", "u1", "u1", "u2", "nobody"],
        "job_id": ["j0", "j1", "j2", "j3", "j4", "j10", "j7"],
    })
    return held_out, seen, catalog


class TestSampleRankingCandidates:
    def test_shape_exclusion_and_distinctness(self) -> None:
        held_out, seen, catalog = _sampler_fixture()
        users, job_ids, mask = sample_ranking_candidates(held_out, seen, catalog, num_negatives=8, seed=0)
        assert users.tolist() == ["u0", "u1", "u2"]
        assert job_ids.shape == (3, 9) and mask.shape == (3, 9) and mask.all()
        assert job_ids[:, 0].tolist() == ["j0", "j5", "j29"]
        seen_by_user = seen.groupby("user_id")["job_id"].apply(set)
        for row, user in zip(job_ids, users):
            negatives = set(row[1:])
            assert len(negatives) == 8
            assert negatives <= set(catalog)
            assert not negatives & (seen_by_user[user] | {row[0]})

    def test_deterministic_per_seed(self) -> None:
        held_out, seen, catalog = _sampler_fixture()
        first = sample_ranking_candidates(held_out, seen, catalog, 8, seed=3).job_ids
        again = sample_ranking_candidates(held_out, seen, catalog, 8, seed=3).job_ids
        other = sample_ranking_candidates(held_out, seen, catalog, 8, seed=4).job_ids
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)

    def test_uniform_over_unseen_jobs(self) -> None:
        catalog = np.arange(12)
        held_out = pd.DataFrame({"user_id": ["u"] * 3000, "job_id": [0] * 3000})
        seen = pd.DataFrame({"user_id": ["u", "u"], "job_id": [3, 7]})
        # 9 allowed jobs: rows with 2n <= 9 use redraws; 5 per row takes the dense permutation path
        for n in (2, 5):
            job_ids = sample_ranking_candidates(held_out, seen, catalog, n, seed=0).job_ids[:, 1:]
            counts = np.bincount(job_ids.astype(int).ravel(), minlength=12)
            assert counts[[0, 3, 7]].sum() == 0
            allowed = np.delete(counts, [0, 3, 7])
            expected = 3000 * n / 9
            assert np.abs(allowed - expected).max() < 5 * math.sqrt(expected)
            assert all(len(set(row)) == n for row in job_ids)

    def test_ids_match_as_strings(self) -> None:
        catalog = np.arange(6)  # int ids; seen/held-out as strings
        held_out = pd.DataFrame({"user_id": [1], "job_id": ["0"]})
        seen = pd.DataFrame({"user_id": ["1", "1"], "job_id": ["1", "2"]})
        job_ids = sample_ranking_candidates(held_out, seen, catalog, 3, seed=0).job_ids
        assert sorted(int(j) for j in job_ids[0, 1:]) == [3, 4, 5]

    def test_full_catalog_mode_pads_with_mask(self) -> None:
        held_out, seen, catalog = _sampler_fixture()
        users, job_ids, mask = sample_ranking_candidates(held_out, seen, catalog, None, seed=0)
        seen_by_user = seen.groupby("user_id")["job_id"].apply(set)
        assert mask.sum(axis=1).tolist() == [1 + 27, 1 + 27, 1 + 28]
        assert job_ids.shape == (3, 1 + 28)
        for row, row_mask, user in zip(job_ids, mask, users):
            assert set(row[1:][row_mask[1:]]) == set(catalog) - seen_by_user[user] - {row[0]}
            assert (row[~row_mask] == row[0]).all()  # padding repeats the positive: still a scorable id
        scores = np.where(mask, 0.0, 1.0)  # padding would outrank the positive if it were not masked
        scores[:, 0] = 0.5
        assert ranking_metrics(scores, k=1, mask=mask)["hr@1"] == 1.0

    def test_too_few_unseen_jobs(self) -> None:
        held_out, seen, catalog = _sampler_fixture()
        with pytest.raises(ValueError, match=r"user 'u0' has 27 unseen catalog jobs, fewer than num_neg"):
            sample_ranking_candidates(held_out, seen, catalog, 28, seed=0)

    @pytest.mark.parametrize(
        ("catalog", "num_negatives", "match"),
        [
            (np.array(["a", "a", "b"]), 1, "unique job ids"),
            (np.array([], dtype=object), 1, "non-empty"),
            (np.array(["a", "b"]), 0, "num_negatives must be >= 1"),
        ],
    )
    def test_rejects_bad_arguments(self, catalog: np.ndarray, num_negatives: int, match: str) -> None:
        held_out = pd.DataFrame({"user_id": ["u"], "job_id": ["a"]})
        with pytest.raises(ValueError, match=match):
            sample_ranking_candidates(held_out, held_out, catalog, num_negatives, seed=0)

    def test_missing_column(self) -> None:
        held_out = pd.DataFrame({"user_id": ["u"], "job_id": ["a"]})
        with pytest.raises(DataValidationError, match=r"seen: missing column\(s\) \['job_id'\]"):
            sample_ranking_candidates(held_out, held_out[["user_id"]], np.array(["a", "b"]), 1, seed=0)

    def test_vectorised_at_scale(self) -> None:
        rng = np.random.default_rng(0)
        num_users, size = 20_000, 5_000
        catalog = np.arange(size)
        held_out = pd.DataFrame({"user_id": np.arange(num_users), "job_id": rng.integers(0, size, num_users)})
        seen = pd.DataFrame({
            "user_id": np.repeat(np.arange(num_users), 20), "job_id": rng.integers(0, size, 20 * num_users)
        })
        job_ids = sample_ranking_candidates(held_out, seen, catalog, 100, seed=0).job_ids.astype(np.int64)
        assert job_ids.shape == (num_users, 101)
        assert (np.diff(np.sort(job_ids[:, 1:], axis=1), axis=1) > 0).all()
        forbidden = np.concatenate([
            seen["user_id"].to_numpy() * size + seen["job_id"].to_numpy(),
            np.arange(num_users) * size + job_ids[:, 0],
        ])
        sampled = np.arange(num_users)[:, None] * size + job_ids[:, 1:]
        assert not np.isin(sampled, forbidden).any()


class TestPopularityBaseline:
    @staticmethod
    def _train() -> pd.DataFrame:
        return pd.DataFrame({
            "user_id": list("abcdefghij"),
            "job_id": ["hot"] * 4 + ["warm"] * 4 + ["cold"] * 2,
            "label": [1, 1, 1, 0, 1, 1, 0, 0, 0, 0],
        })

    def test_scores_and_ordering(self) -> None:
        baseline = PopularityBaseline(smoothing=2.0).fit(self._train())
        prior = 5 / 10
        assert baseline.prior == prior
        scores = baseline.score(np.array(["hot", "warm", "cold", "never-seen"]))
        np.testing.assert_allclose(scores, [(3 + 1) / 6, (2 + 1) / 6, (0 + 1) / 4, prior])
        assert scores[0] > scores[1] > scores[2]
        assert ((scores >= 0) & (scores <= 1)).all()

    def test_more_evidence_moves_further_from_prior(self) -> None:
        train = pd.DataFrame({
            "user_id": range(8),
            "job_id": ["a"] * 2 + ["b"] * 4 + ["c"] * 2,
            "label": [1, 0, 1, 1, 0, 0, 0, 0],
        })
        baseline = PopularityBaseline().fit(train)  # prior 3/8; a and b both have raw rate 1/2
        a, b = baseline.score(np.array(["a", "b"]))
        assert b > a > baseline.prior

    def test_scores_keep_shape_and_match_ids_as_strings(self) -> None:
        train = pd.DataFrame({"user_id": [1, 2], "job_id": [12, 13], "label": [1, 0]})
        baseline = PopularityBaseline().fit(train)
        grid = baseline.score(np.array([["12", "13"], ["14", "12"]], dtype=object))
        assert grid.shape == (2, 2) and grid[0, 0] == grid[1, 1] > grid[1, 0] > grid[0, 1]

    def test_json_round_trip(self) -> None:
        baseline = PopularityBaseline(smoothing=3.0).fit(self._train())
        restored = PopularityBaseline.from_dict(json.loads(json.dumps(baseline.to_dict())))
        ids = np.array(["hot", "warm", "cold", "unseen"])
        np.testing.assert_array_equal(restored.score(ids), baseline.score(ids))
        assert restored.smoothing == 3.0

    def test_bad_state_and_usage(self) -> None:
        state = PopularityBaseline().fit(self._train()).to_dict()
        with pytest.raises(ArtifactError, match="format_version 2, expected 1"):
            PopularityBaseline.from_dict({**state, "format_version": 2})
        with pytest.raises(ArtifactError, match="lengths 3/2/3"):
            PopularityBaseline.from_dict({**state, "positives": state["positives"][:2]})
        with pytest.raises(ArtifactError, match="'prior'"):
            PopularityBaseline.from_dict({k: v for k, v in state.items() if k != "prior"})
        with pytest.raises(RuntimeError, match="not fitted"):
            PopularityBaseline().score(np.array(["hot"]))
        with pytest.raises(ConfigError, match="smoothing: must be a number >= 0"):
            PopularityBaseline(smoothing=-1.0)
        with pytest.raises(DataValidationError, match=r"missing column\(s\) \['label'\]"):
            PopularityBaseline().fit(self._train().drop(columns="label"))


def _report(oracle_auc: float | None) -> dict:
    """An ``evaluate_split``-shaped report: both metric sets per side, plus the oracle AUC."""
    labels = np.array([1, 0, 1, 0])
    sides = {
        "model": (np.array([0.9, 0.6, 0.4, 0.1]), np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.9]])),
        "popularity": (np.full(4, 0.5), np.full((2, 3), 0.5)),
    }
    report: dict = {name: {**classification_metrics(labels, scores), **ranking_metrics(ranking, 10)}
                    for name, (scores, ranking) in sides.items()}
    return {**report, "oracle_auc": oracle_auc}


def test_format_report_contains_the_numbers() -> None:
    report = _report(oracle_auc=0.91)
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "model", "popularity", "oracle"]
    assert len(lines) == 2 + len(report["model"])
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["roc_auc"] == ["0.7500", "0.5000", "0.9100"]
    assert rows["mrr"] == [f"{(1 + 1 / 3) / 2:.4f}", "0.5000", "-"]
    assert rows["count"] == ["4", "4", "-"] and rows["users"] == ["2", "2", "-"]
    assert "oracle" not in format_report(_report(None))
    model_only = format_report({"model": report["model"], "split": "test"}).splitlines()
    assert model_only[0].split() == ["metric", "model"] and model_only[6].split() == ["roc_auc", "0.7500"]
