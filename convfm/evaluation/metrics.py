"""Classification and ranking metrics, the ranking-candidate sampler and a popularity baseline.

Sampled ranking protocol (the live one, which ranks against every live job, is ``convfm.evaluation.live``; both
end in ``positive_ranks`` and ``rank_metrics``): each user's held-out positive (``held_out_last_positive``) is ranked against N negatives
sampled uniformly from the catalog minus every job the user has seen, or against that whole remainder
(``sample_ranking_candidates``). Scores form a matrix (U, 1+N): column 0 is the positive, columns 1.. the
candidates.

Rank (one definition, used by every ranking metric): ties are split fairly, never in the model's favour,
    rank = 1 + #(candidates scoring strictly higher) + 0.5 * #(candidates scoring equal).
The rank stays fractional (no ceiling): HR@K = mean(rank <= K), NDCG@K = mean(1/log2(rank+1) if rank <= K
else 0), MRR = mean(1/rank). A constant scorer thus gets rank (N+2)/2, i.e. chance level, not rank 1.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd

from convfm.errors import ArtifactError, DataValidationError
from convfm.validate import check_number

LOG_LOSS_EPS = 1e-7  # float32 sigmoids saturate to exactly 0/1; clip so one such score costs ~16 nats
POPULARITY_FORMAT_VERSION = 1


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{name}: missing column(s) {missing}; has {list(frame.columns)}")


def as_str_ids(values: Any) -> np.ndarray:
    """Ids compare as strings everywhere (DESIGN: ``12`` and ``"12"`` are the same id)."""
    return np.asarray(values).astype(str)


def _factorize_str(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct str ids) of flattened ``values``; only distinct ids are stringified (fast)."""
    codes, uniques = pd.factorize(np.asarray(values).ravel())
    str_codes, str_uniques = pd.factorize(as_str_ids(uniques))  # 12 and "12" merge here
    return np.append(str_codes, -1)[codes], np.asarray(str_uniques, dtype=object)


def lookup_ids(index: pd.Index, values: Any) -> np.ndarray:
    """Position in ``index`` (of str ids) of each id in flattened ``values``, -1 if absent."""
    codes, uniques = _factorize_str(values)
    return np.append(index.get_indexer(uniques), -1)[codes]


# --------------------------------------------------------------------------- classification


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall, f1 (at ``threshold``), roc_auc, log_loss, positive_rate, count.

    ``labels`` are 0/1, ``scores`` probabilities in [0, 1], both (n,). ``roc_auc`` is NaN when only one
    class is present; ``positive_rate`` is the fraction of positive labels; log loss clips scores to
    [eps, 1 - eps] with eps = 1e-7.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score  # ~2 s: on first use

    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0 or y.shape != p.shape:
        raise ValueError(f"labels and scores must be non-empty and of equal length, got {y.size}, {p.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:5].tolist()}")
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("scores must be probabilities in [0, 1] (apply the sigmoid to logits first)")
    y_int = y.astype(np.int64)
    predicted = (p >= threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_int, predicted, average="binary", zero_division=0
    )
    clipped = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    log_loss = -np.mean(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped))
    two_classes = 0 < y.sum() < y.size
    return {
        "accuracy": float(accuracy_score(y_int, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(y_int, p)) if two_classes else float("nan"),
        "log_loss": float(log_loss),
        "positive_rate": float(y.mean()),
        "count": int(y.size),
    }


# --------------------------------------------------------------------------- ranking


def positive_ranks(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Tie-averaged rank (U,) of column 0 among columns 1.. of ``scores`` (U, 1+N); see module docstring.

    ``mask`` (U, 1+N) bool marks real columns; False columns (padding) are ignored.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be (U, 1+N) with U >= 1, got shape {s.shape}")
    positive, candidates = s[:, :1], s[:, 1:]
    valid = np.ones(candidates.shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} != scores shape {s.shape}")
        if not m[:, 0].all():
            raise ValueError("mask column 0 (the held-out positive) must be True")
        valid = m[:, 1:]
    if not (np.isfinite(positive).all() and np.isfinite(candidates[valid]).all()):
        raise ValueError("scores must be finite (a NaN would silently rank as a hit or a miss)")
    greater = ((candidates > positive) & valid).sum(axis=1)
    ties = ((candidates == positive) & valid).sum(axis=1)
    return 1.0 + greater + 0.5 * ties


def ranking_metrics(scores: np.ndarray, k: int = 10, mask: np.ndarray | None = None) -> dict[str, float]:
    """``hr@k``, ``ndcg@k``, ``mrr`` and ``users`` for ``scores`` (U, 1+N), column 0 the positive.

    ``mask`` (U, 1+N) bool drops padded candidates (full-catalog mode of ``sample_ranking_candidates``).
    """
    return {**rank_metrics(positive_ranks(scores, mask), k), "users": int(np.shape(scores)[0])}


def rank_metrics(rank: np.ndarray, k: int = 10) -> dict[str, float]:
    """``hr@k``, ``ndcg@k``, ``mrr`` of ranks (U,) from ``positive_ranks`` (every protocol ends here)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rank = np.asarray(rank, dtype=np.float64)
    hit = rank <= k
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0).mean()),
        "mrr": float((1.0 / rank).mean()),
    }


def held_out_last_positive(examples: pd.DataFrame) -> pd.DataFrame:
    """The last positive (max ``timestamp``, label > 0) per user, one row per user sorted by ``user_id``.

    Ties on timestamp keep the later row; missing timestamps count as oldest. Users without a positive are
    absent. All input columns are kept.
    """
    _require_columns(examples, ("user_id", "job_id", "label", "timestamp"), "examples")
    positives = examples[examples["label"] > 0]
    ordered = positives.sort_values("timestamp", kind="stable", na_position="first")
    last = ordered.groupby("user_id", sort=False).tail(1)
    return last.sort_values("user_id", kind="stable").reset_index(drop=True)


class RankingCandidates(NamedTuple):
    """Candidates for ``ranking_metrics``: score ``job_ids`` and pass ``mask`` along.

    users: (U,) one per held-out row. job_ids: (U, 1+W), column 0 the held-out positive. mask: (U, 1+W)
    bool, all True when sampling N negatives; in full-catalog mode rows are right-padded with the row's
    positive id (always a scorable id) and mask is False there.
    """

    users: np.ndarray
    job_ids: np.ndarray
    mask: np.ndarray


def sample_ranking_candidates(
    held_out: pd.DataFrame,
    seen: pd.DataFrame,
    catalog: np.ndarray,
    num_negatives: int | None,
    seed: int,
) -> RankingCandidates:
    """Per held-out (user_id, job_id) row: the positive plus negatives from ``catalog`` the user never saw.

    Negatives are drawn uniformly without replacement from catalog minus (the user's jobs in ``seen`` and
    the positive); ``num_negatives=None`` takes that whole remainder (memory U x |catalog|: use it on small
    catalogs or a user subset). Deterministic for ``seed``. Raises ``ValueError`` when a user has fewer
    than ``num_negatives`` unseen jobs. Candidate order within a row is arbitrary (metrics ignore it).
    """
    _require_columns(held_out, ("user_id", "job_id"), "held_out")
    _require_columns(seen, ("user_id", "job_id"), "seen")
    if num_negatives is not None and num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1 or None (full catalog), got {num_negatives}")
    catalog = np.asarray(catalog)
    catalog_index = pd.Index(as_str_ids(catalog.ravel()))
    if catalog.ndim != 1 or catalog.size == 0 or not catalog_index.is_unique:
        raise ValueError("catalog must be a non-empty 1-D array of unique job ids")
    num_rows, size = len(held_out), len(catalog)
    excluded_rows, excluded_codes = excluded_pairs(held_out, seen, catalog_index)
    available = size - np.bincount(excluded_rows, minlength=num_rows)

    if num_negatives is None:
        width = int(available.max(initial=0))
        ranks = np.broadcast_to(np.arange(width), (num_rows, width))
        mask = ranks < available[:, None]
        ranks = np.minimum(ranks, np.maximum(available - 1, 0)[:, None])
    else:
        short = np.flatnonzero(available < num_negatives)
        if short.size:
            user = held_out["user_id"].iloc[short[0]]
            raise ValueError(
                f"user {user!r} has {available[short[0]]} unseen catalog jobs, fewer than "
                f"num_negatives={num_negatives} ({short.size} such users)"
            )
        ranks = _distinct_ranks(available, num_negatives, np.random.default_rng(seed))
        mask = np.ones(ranks.shape, dtype=bool)
    codes = _rank_to_code(ranks, excluded_rows, excluded_codes, size)

    positives = held_out["job_id"].to_numpy()
    job_ids = np.empty((num_rows, 1 + ranks.shape[1]), dtype=np.result_type(catalog.dtype, positives.dtype))
    job_ids[:, 0] = positives
    job_ids[:, 1:] = catalog[np.minimum(codes, size - 1)]  # clip: fully-seen rows in full-catalog mode
    if not mask.all():
        job_ids[:, 1:] = np.where(mask, job_ids[:, 1:], positives[:, None])
    full_mask = np.concatenate([np.ones((num_rows, 1), dtype=bool), mask], axis=1)
    return RankingCandidates(held_out["user_id"].to_numpy(), job_ids, full_mask)


def excluded_pairs(
    held_out: pd.DataFrame, seen: pd.DataFrame, catalog_index: pd.Index
) -> tuple[np.ndarray, np.ndarray]:
    """(row, catalog code) pairs each held-out row must not sample, sorted, unique: seen jobs + positive."""
    size = len(catalog_index)
    user_codes, users = pd.factorize(as_str_ids(held_out["user_id"]))
    seen_pairs = pd.DataFrame({
        "user": lookup_ids(pd.Index(users), seen["user_id"]),
        "code": lookup_ids(catalog_index, seen["job_id"]),
    }).merge(pd.DataFrame({"user": user_codes, "row": np.arange(len(held_out))}), on="user")
    rows = np.concatenate([seen_pairs["row"].to_numpy(), np.arange(len(held_out))])
    codes = np.concatenate([seen_pairs["code"].to_numpy(), lookup_ids(catalog_index, held_out["job_id"])])
    keys = np.sort(rows[codes >= 0] * size + codes[codes >= 0])
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
    return np.divmod(keys, size)


def _distinct_ranks(available: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(U, n) distinct integers per row, row u uniform without replacement from [0, available[u])."""
    ranks = rng.integers(0, available[:, None], size=(available.size, n))
    # Redrawing duplicates converges fast while n <= available / 2. Denser rows (available < 2n) instead
    # take the first n of a random permutation: argsort of uniform keys, padding keyed +inf.
    dense = np.flatnonzero(2 * n > available)
    if dense.size:
        width = int(available[dense].max())
        keys = rng.random((dense.size, width))
        keys[np.arange(width) >= available[dense][:, None]] = np.inf
        ranks[dense] = np.argsort(keys, axis=1)[:, :n]
    active = np.setdiff1d(np.arange(available.size), dense)
    while active.size:
        block = np.sort(ranks[active], axis=1)
        duplicate = np.zeros(block.shape, dtype=bool)
        duplicate[:, 1:] = block[:, 1:] == block[:, :-1]
        r, c = np.nonzero(duplicate)
        block[r, c] = rng.integers(0, available[active[r]])
        ranks[active] = block
        active = active[np.unique(r)]
    return ranks


def _rank_to_code(
    ranks: np.ndarray, excluded_rows: np.ndarray, excluded_codes: np.ndarray, size: int
) -> np.ndarray:
    """Map rank r of row u to the r-th catalog code not excluded for u.

    With u's excluded codes sorted e_0 < e_1 < ..., the answer is r + #{i : e_i - i <= r}; the pairs
    (u, e_i - i) are searched in one flat sorted array keyed u * (size + 1) + (e_i - i).
    """
    num_rows = ranks.shape[0]
    starts = np.searchsorted(excluded_rows, np.arange(num_rows))
    shifted = excluded_codes - (np.arange(excluded_codes.size) - starts[excluded_rows])
    flat = excluded_rows * (size + 1) + shifted
    query = np.arange(num_rows)[:, None] * (size + 1) + ranks
    return ranks + np.searchsorted(flat, query, side="right") - starts[:, None]


# --------------------------------------------------------------------------- popularity baseline


class PopularityBaseline:
    """Scores a job by its smoothed positive rate, the same for every user.

    score(job) = (positives + smoothing * prior) / (interactions + smoothing), prior = the global positive
    rate; a job absent from training scores the prior. Jobs with equal raw rates are ordered by evidence:
    more interactions pull the score further from the prior.
    """

    def __init__(self, smoothing: float = 1.0) -> None:
        self.smoothing = check_number(smoothing, "smoothing", 0)
        self.prior: float | None = None

    def fit(self, train_examples: pd.DataFrame) -> "PopularityBaseline":
        """Count positives (label > 0) and interactions per job."""
        _require_columns(train_examples, ("user_id", "job_id", "label"), "train_examples")
        if train_examples.empty:
            raise ValueError("train_examples is empty")
        positive = (train_examples["label"].to_numpy() > 0).astype(np.int64)
        codes, job_ids = _factorize_str(train_examples["job_id"])
        if (codes < 0).any():
            raise DataValidationError("train_examples: column job_id has missing values")
        self._set(positive.mean(), job_ids, np.bincount(codes, positive), np.bincount(codes))
        return self

    @classmethod
    def from_counts(cls, prior: float, job_ids: Any, positives: Any, interactions: Any) -> "PopularityBaseline":
        """Fitted from per-job counts (merged from batches on the cluster) and the global positive rate."""
        baseline = cls()
        baseline._set(prior, job_ids, positives, interactions)
        return baseline

    def _set(self, prior: float, job_ids: Any, positives: Any, interactions: Any) -> None:
        self.prior = float(prior)
        self._index = pd.Index(as_str_ids(job_ids))
        self._positives = np.asarray(positives, dtype=np.int64)
        self._interactions = np.asarray(interactions, dtype=np.int64)
        a = self.smoothing
        self._scores = (self._positives + a * self.prior) / (self._interactions + a)

    def score(self, job_ids: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] with the shape of ``job_ids`` (any shape, e.g. (U, 1+N) candidates)."""
        if self.prior is None:
            raise RuntimeError("PopularityBaseline is not fitted; call fit() or from_dict() first")
        ids = np.asarray(job_ids)
        return np.append(self._scores, self.prior)[lookup_ids(self._index, ids)].reshape(ids.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.prior is None:
            raise RuntimeError("PopularityBaseline is not fitted; nothing to save")
        return {
            "format_version": POPULARITY_FORMAT_VERSION,
            "smoothing": self.smoothing,
            "prior": self.prior,
            "job_ids": self._index.tolist(),
            "positives": self._positives.tolist(),
            "interactions": self._interactions.tolist(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "PopularityBaseline":
        """Rebuild from ``to_dict`` output; raises ``ArtifactError`` on a wrong version or bad state."""
        version = state.get("format_version")
        if version != POPULARITY_FORMAT_VERSION:
            raise ArtifactError(
                f"popularity baseline: format_version {version!r}, expected {POPULARITY_FORMAT_VERSION}"
            )
        try:
            ids, pos, n = state["job_ids"], state["positives"], state["interactions"]
            if not len(ids) == len(pos) == len(n):
                raise ValueError(f"job_ids/positives/interactions lengths {len(ids)}/{len(pos)}/{len(n)}")
            baseline = cls(smoothing=float(state["smoothing"]))
            baseline._set(float(state["prior"]), np.asarray(ids, dtype=object), pos, n)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"popularity baseline: bad state ({type(exc).__name__}: {exc})") from None
        return baseline
