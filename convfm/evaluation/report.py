"""Evaluation report of a model on one split: classification metrics and a ranking protocol, beside baselines.

Protocols (``protocol``; every report names its own in ``report["protocol"]``):
- ``live`` (default): every positive of the split (at most ``max_events``, a seeded sample) against all jobs
  live at its timestamp that the user never interacted with (``convfm.evaluation.live``). Methods: the model,
  all-time popularity, recent popularity (the 7 days before t), newest first, and the oracle on synthetic data.
- ``sampled``: each user's last positive against ``negatives`` jobs sampled uniformly among those the user
  never interacted with, at most ``max_users`` users. Methods: the model and all-time popularity.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from convfm.config import EVAL_PROTOCOLS
from convfm.data.liveness import ALWAYS
from convfm.data.prepare import PreparedData, all_positives
from convfm.data.synth import oracle_auc
from convfm.evaluation.live import (
    Scorer,
    catalog_windows,
    evaluate_live,
    mean_live_jobs,
    newest_scorer,
    oracle_scorer,
    popularity_scorer,
    recent_popularity_scorer,
    select_events,
)
from convfm.evaluation.metrics import (
    PopularityBaseline,
    RankingCandidates,
    as_str_ids,
    classification_metrics,
    held_out_last_positive,
    ranking_metrics,
    sample_ranking_candidates,
)
from convfm.features.jobs import UNKNOWN_ROW
from convfm.model.ranking import CatalogRanker
from convfm.training.epoch import predict_proba
from convfm.validate import check_int

METHODS = ("model", "popularity", "recent_popularity", "newest", "oracle")  # report sections, table columns


def _seen(data: PreparedData) -> pd.DataFrame:
    """(user_id, job_id) pairs of every split, unique: what no protocol may rank as a negative."""
    seen = data.seen
    if seen is None:
        seen = pd.concat([f[["user_id", "job_id"]] for f in data.frames.values()], ignore_index=True)
    return seen.drop_duplicates()


def _ranking_candidates(
    data: PreparedData, split: str, negatives: int, max_users: int, seed: int
) -> Optional[tuple[RankingCandidates, np.ndarray]]:
    """(candidates, the held-out positives' times) for users with at least ``negatives`` unseen catalog jobs
    (the others cannot be ranked on this protocol and are left out; the report's protocol line counts the
    users kept). Candidates are scored at their positive's time, so history features never see it."""
    seen = _seen(data)
    negatives = min(negatives, len(data.catalog) - 1)
    unseen = len(data.catalog) - seen.groupby("user_id").size()
    held_out = held_out_last_positive(data.frames[split])
    held_out = held_out[held_out["user_id"].map(unseen).fillna(len(data.catalog)) >= negatives]
    if held_out.empty or negatives < 1:
        return None
    if len(held_out) > max_users:
        held_out = held_out.sample(n=max_users, random_state=seed).sort_values("user_id")
    candidates = sample_ranking_candidates(held_out, seen, data.catalog, negatives, seed)
    return candidates, held_out["timestamp"].to_numpy(np.int64)


def score_pairs(
    model: nn.Module, data: PreparedData, users: np.ndarray, job_ids: np.ndarray,
    batch_size: int, device: torch.device, times: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Model probabilities for each (users[i], job_ids[i, j]) at ``times[i]`` (int64 order keys; None: after
    every known event, and now) -> job_ids' shape."""
    pairs = pd.DataFrame({
        "user_id": np.repeat(users, job_ids.shape[1]),
        "job_id": job_ids.ravel(),
        "label": np.zeros(job_ids.size, dtype=np.float32),
    })
    if times is not None:
        pairs["timestamp"] = np.repeat(np.asarray(times, dtype=np.int64), job_ids.shape[1])
    probs = predict_proba(model, data.extractor.example_set(pairs), batch_size, device)
    return probs.reshape(job_ids.shape)


def model_scorer(model: nn.Module, data: PreparedData, batch_size: int, device: torch.device) -> Scorer:
    """The model against the whole catalog per event: ``CatalogRanker``'s fast path (logits; the job side is
    computed once here), or the model's forward over every pair when its parts cannot be split."""
    extractor, catalog = data.extractor, np.asarray(data.catalog)
    try:
        ranker = CatalogRanker(model, extractor)
    except ValueError:
        return lambda users, times, codes: score_pairs(
            model, data, np.asarray(users), np.broadcast_to(catalog[codes], (len(users), len(codes))), batch_size,
            device, times)
    job_rows = np.array([extractor.job_rows.get(j, UNKNOWN_ROW) for j in as_str_ids(catalog)], dtype=np.int64)

    def score(users: np.ndarray, times: np.ndarray, codes: np.ndarray) -> np.ndarray:
        ids = as_str_ids(users)
        rows = np.array([extractor.user_rows.get(u, UNKNOWN_ROW) for u in ids], dtype=np.int64)
        table = extractor.user_side(extractor.user_catalog.take(rows), np.asarray(ids), times)  # history before t
        return ranker.score_all(table, job_rows[codes], times, kept=True).float().cpu().numpy()  # (e, M)

    return score


def _live_ranking(model: nn.Module, data: PreparedData, split: str, baseline: PopularityBaseline, k: int,
                  max_events: int, seed: int, batch_size: int, device: torch.device) -> dict[str, Any]:
    """The live protocol's sections: {"protocol": {...}, method: {...} per method}."""
    catalog = np.asarray(data.catalog)
    windows = catalog_windows(catalog, data.windows)
    events = select_events(data.frames[split], _seen(data), catalog, windows, max_events, seed)
    where = "live at its time" if data.windows is not None else "in the whole catalog (no job calendar)"
    protocol = {"name": "live", "events": len(events.times), "positives": events.positives,
                "skipped": events.skipped, "mean_live_jobs": mean_live_jobs(events, windows)}
    protocol["description"] = (
        f"each positive vs every job {where} the user never interacted with (mean {protocol['mean_live_jobs']:.0f} "
        f"live), {protocol['events']} of {events.positives} positives, skipped {events.skipped}")
    if not len(events.times):
        return {"protocol": protocol}
    key = ("live", split, k, max_events, seed)
    if key not in data.memo:  # the baselines' and the oracle's sections: once per split and settings
        scorers: dict[str, Scorer] = {"popularity": popularity_scorer(baseline, catalog),
                                      "recent_popularity": recent_popularity_scorer(all_positives(data), catalog)}
        if data.windows is not None and (data.windows.start != ALWAYS).any():  # without posting dates: no order
            scorers["newest"] = newest_scorer(windows)
        if data.oracle is not None:
            scorers["oracle"] = oracle_scorer(data.oracle, catalog)
        data.memo[key] = evaluate_live(events, windows, scorers, k)
    ranked = evaluate_live(events, windows, {"model": model_scorer(model, data, batch_size, device)}, k)
    return {"protocol": protocol, **ranked, **data.memo[key]}


def evaluate_split(
    model: nn.Module,
    data: PreparedData,
    split: str,
    batch_size: int = 4096,
    device: Optional[torch.device | str] = None,
    negatives: int = 99,
    k: int = 10,
    max_users: int = 5000,
    seed: int = 0,
    protocol: str = "live",
    max_events: int = 5000,
) -> dict[str, Any]:
    """{"split", "protocol": {"name", "description", ...}, "model": {...}, "popularity": {...}, other methods'
    sections (live), "oracle_auc": float|None}. "model" and "popularity" hold the classification metrics of
    the split's examples and the protocol's ranking metrics; the other methods only ranking metrics.
    ``device``: where batches are scored; default the model's own (a GPU-trained model stays on its GPU)."""
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"protocol must be one of {EVAL_PROTOCOLS}, got {protocol!r}")
    check_int(max_events, "max_events", 1)
    device = next(model.parameters()).device if device is None else torch.device(device)
    frame, examples = data.frames[split], data.sets[split]
    labels = examples.labels.astype(np.float64)
    model_probs = predict_proba(model, examples, batch_size, device)
    report: dict[str, Any] = {"split": split, "model": classification_metrics(labels, model_probs)}
    baseline = None
    if "job_id" in frame:
        baseline = data.popularity
        if baseline is None:
            baseline = PopularityBaseline().fit(data.frames["train"])
        # a popularity score ranks (ROC-AUC) but is no probability: its log loss or accuracy would mean nothing
        popular = classification_metrics(labels, baseline.score(frame["job_id"].to_numpy()))
        report["popularity"] = {key: popular[key] for key in ("roc_auc", "positive_rate", "count") if key in popular}
    if data.catalog is not None and protocol == "live":
        for name, section in _live_ranking(model, data, split, baseline, k, max_events, seed, batch_size,
                                           device).items():
            report[name] = {**report.get(name, {}), **section}
    elif data.catalog is not None:
        candidates = _ranking_candidates(data, split, negatives, max_users, seed)
        report["protocol"] = {"name": "sampled", "users": 0,
                              "description": "last positive per user vs sampled unseen jobs: no user to rank"}
        if candidates is not None:
            (users, job_ids, _), times = candidates  # sampled negatives: the mask is all True
            scores = score_pairs(model, data, users, job_ids, batch_size, device, times)
            report["model"].update(ranking_metrics(scores, k))
            report["popularity"].update(ranking_metrics(baseline.score(job_ids.ravel()).reshape(job_ids.shape), k))
            report["protocol"] = {"name": "sampled", "users": len(users), "description": (
                f"last positive per user vs {job_ids.shape[1] - 1} sampled unseen jobs, {len(users)} users")}
    if ("oracle_auc", split) not in data.memo:
        data.memo["oracle_auc", split] = _oracle_auc(frame, data)
    report["oracle_auc"] = data.memo["oracle_auc", split]
    return report


def _oracle_auc(frame: pd.DataFrame, data: PreparedData) -> Optional[float]:
    """ROC-AUC of the true probabilities on the split's examples: the oracle scores every example at its time
    (sampled negatives included, so it ranks exactly what the model ranks); without it, truth.csv's rows."""
    if data.oracle is None:
        return oracle_auc(frame, data.truth)
    labels = frame["label"].to_numpy()
    if len(np.unique(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score  # ~2 s to import: only where an oracle AUC is computed

    p = data.oracle.score(frame["user_id"].to_numpy(), frame["job_id"].to_numpy()[:, None],
                          frame["timestamp"].to_numpy(np.int64))[:, 0]
    return float(roc_auc_score(labels, p))


# --------------------------------------------------------------------------------------------- text


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "-"
    return str(value) if isinstance(value, (int, np.integer)) else f"{float(value):.4f}"


def format_report(report: Mapping[str, Any]) -> str:
    """A protocol line, then an aligned table: one row per metric, one column per method present (model,
    popularity, recent_popularity, newest, oracle; the oracle column also shows ``oracle_auc`` as roc_auc).

    Other top-level keys are ignored; a metric a method lacks shows as "-".
    """
    oracle_auc_value = report.get("oracle_auc")
    columns = [m for m in METHODS if report.get(m) or (m == "oracle" and oracle_auc_value is not None)]
    sections = {m: dict(report.get(m) or {}) for m in columns}
    if "oracle" in sections and oracle_auc_value is not None:
        sections["oracle"]["roc_auc"] = oracle_auc_value
    names = list(dict.fromkeys(name for m in columns for name in sections[m]))
    header = ["metric", *columns]
    lines = [header] + [[name, *(_cell(sections[m].get(name)) for m in columns)] for name in names]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ["-" * w for w in widths])
    table = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    ]
    protocol = report.get("protocol")
    if isinstance(protocol, Mapping):
        table.insert(0, f"protocol: {protocol.get('name')}: {protocol.get('description', '')}")
    return "\n".join(table)
