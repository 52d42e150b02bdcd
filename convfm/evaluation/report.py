"""Evaluation report of a model on one split: classification + ranking metrics beside a popularity baseline.

Ranking protocol: for each user in the split, the held-out last positive job is ranked against
``eval_negatives`` jobs sampled uniformly from the catalog among those the user never interacted with
(in any split). At most ``max_users`` users (seeded sample) keep per-epoch validation cheap.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from convfm.evaluation.metrics import (
    PopularityBaseline,
    classification_metrics,
    RankingCandidates,
    held_out_last_positive,
    ranking_metrics,
    sample_ranking_candidates,
)
from convfm.data.prepare import PreparedData
from convfm.data.synth import oracle_auc
from convfm.training.epoch import predict_proba


def _ranking_candidates(
    data: PreparedData, split: str, negatives: int, max_users: int, seed: int
) -> Optional[RankingCandidates]:
    """Candidates for users with at least ``negatives`` unseen catalog jobs (the others cannot be ranked
    on this protocol and are left out; the report's protocol line counts the users kept)."""
    if data.catalog is None:
        return None
    seen = data.seen
    if seen is None:
        seen = pd.concat([f[["user_id", "job_id"]] for f in data.frames.values()], ignore_index=True)
    seen = seen.drop_duplicates()
    negatives = min(negatives, len(data.catalog) - 1)
    unseen = len(data.catalog) - seen.groupby("user_id").size()
    held_out = held_out_last_positive(data.frames[split])
    held_out = held_out[held_out["user_id"].map(unseen).fillna(len(data.catalog)) >= negatives]
    if held_out.empty or negatives < 1:
        return None
    if len(held_out) > max_users:
        held_out = held_out.sample(n=max_users, random_state=seed).sort_values("user_id")
    return sample_ranking_candidates(held_out, seen, data.catalog, negatives, seed)


def score_pairs(
    model: nn.Module, data: PreparedData, users: np.ndarray, job_ids: np.ndarray,
    batch_size: int, device: torch.device,
) -> np.ndarray:
    """Model probabilities for each (users[i], job_ids[i, j]) -> job_ids' shape."""
    pairs = pd.DataFrame({
        "user_id": np.repeat(users, job_ids.shape[1]),
        "job_id": job_ids.ravel(),
        "label": np.zeros(job_ids.size, dtype=np.float32),
    })
    probs = predict_proba(model, data.extractor.example_set(pairs), batch_size, device)
    return probs.reshape(job_ids.shape)


def evaluate_split(
    model: nn.Module,
    data: PreparedData,
    split: str,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    negatives: int = 99,
    k: int = 10,
    max_users: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """{"model": {...}, "popularity": {...}, "oracle_auc": float|None, "split": str, "protocol": str}."""
    device = torch.device(device)
    frame, examples = data.frames[split], data.sets[split]
    labels = examples.labels.astype(np.float64)
    model_probs = predict_proba(model, examples, batch_size, device)
    report: dict[str, Any] = {"split": split, "model": classification_metrics(labels, model_probs)}
    baseline = None
    if "job_id" in frame:
        baseline = data.popularity
        if baseline is None:
            baseline = PopularityBaseline().fit(data.frames["train"])
    if baseline is not None:
        report["popularity"] = classification_metrics(labels, baseline.score(frame["job_id"].to_numpy()))
    candidates = _ranking_candidates(data, split, negatives, max_users, seed)
    if candidates is not None:
        users, job_ids, _ = candidates  # sampled negatives: the mask is all True
        report["model"].update(ranking_metrics(score_pairs(model, data, users, job_ids, batch_size, device), k))
        pop = baseline.score(job_ids.ravel()).reshape(job_ids.shape)
        report["popularity"].update(ranking_metrics(pop, k))
        report["protocol"] = (
            f"last positive per user vs {job_ids.shape[1] - 1} sampled unseen jobs, {len(users)} users"
        )
    report["oracle_auc"] = oracle_auc(frame, data.truth)
    return report
