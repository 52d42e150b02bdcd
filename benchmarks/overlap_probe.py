"""Does the model score skill matches? A stacking probe: the trained model's test logit, alone and beside the
overlap of the user's and the job's skills, the one signal the model sees only through pooled skill embeddings.

Trains the default ConvFM on ``benchmarks/quality.py``'s market (same sizes, seed, split and 5 epochs), then, per
example of the validation and test splits: the model's logit, and the Jaccard overlap and the count of shared
skills between the ``skills`` column of users.csv and jobs.csv. A logistic regression fitted on the validation
split stacks them; the table reports test ROC-AUC for the model alone, the overlap alone and the stack. If the
stack beats the model, the model leaves the skill match partly unscored: an explicit pair feature would add it.

    .venv/bin/python benchmarks/overlap_probe.py [--users 10000 --jobs 20000 --interactions 50000 --seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.features.text import split_lists
from convfm.training.epoch import predict_proba
from convfm.training.in_process import fit_in_process


def skill_overlap(examples: pd.DataFrame, users: pd.Series, jobs: pd.Series) -> np.ndarray:
    """(N, 2): Jaccard overlap and shared-skill count of each example's user and job skills (user id / job id
    -> ";"-separated skills; unknown ids have none)."""
    mine = [set(s) for s in split_lists(users.reindex(examples["user_id"]).fillna("").to_numpy())]
    theirs = [set(s) for s in split_lists(jobs.reindex(examples["job_id"]).fillna("").to_numpy())]
    shared = np.array([len(a & b) for a, b in zip(mine, theirs)], dtype=np.float64)
    union = np.array([len(a | b) for a, b in zip(mine, theirs)], dtype=np.float64)
    return np.stack([shared / np.maximum(union, 1), shared], axis=1)


def probe_rows(data: PreparedData, logits: dict[str, np.ndarray], overlap: dict[str, np.ndarray]) -> dict[str, float]:
    """Test ROC-AUC per scorer; the stack (model logit, Jaccard, count, log1p(count)) is fitted on validation."""
    stack = {split: np.column_stack([logits[split], overlap[split], np.log1p(overlap[split][:, 1])])
             for split in ("valid", "test")}
    labels = {split: data.frames[split]["label"].to_numpy() for split in ("valid", "test")}
    fitted = LogisticRegression(C=10.0, max_iter=2000).fit(stack["valid"], labels["valid"])
    return {"model": roc_auc_score(labels["test"], logits["test"]),
            "skill overlap alone (Jaccard)": roc_auc_score(labels["test"], overlap["test"][:, 0]),
            "model + skill overlap (stacked on valid)":
                roc_auc_score(labels["test"], fitted.predict_proba(stack["test"])[:, 1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        write_market(generate_market(args.users, args.jobs, args.interactions, seed=args.seed), workdir)
        data = prepare_data(DataConfig(path=workdir, seed=args.seed, split="global_time"))
        model, _ = fit_in_process(data, ModelConfig(), TrainConfig(num_epochs=args.epochs, seed=args.seed))
        users = pd.read_csv(Path(workdir) / "users.csv", dtype=str).set_index("user_id")["skills"]
        jobs = pd.read_csv(Path(workdir) / "jobs.csv", dtype=str).set_index("job_id")["skills"]
        logits, overlap = {}, {}
        for split in ("valid", "test"):
            p = np.clip(predict_proba(model, data.sets[split], 4096, torch.device("cpu")), 1e-7, 1 - 1e-7)
            logits[split] = np.log(p / (1 - p))
            overlap[split] = skill_overlap(data.frames[split], users, jobs)
    rows = probe_rows(data, logits, overlap)
    correlation = np.corrcoef(logits["test"], overlap["test"][:, 0])[0, 1]
    print(f"{args.users} users, {args.jobs} jobs, {args.interactions} interactions, seed {args.seed}; default model, "
          f"{args.epochs} epochs; split global_time; test examples {len(data.frames['test'])}; correlation of the "
          f"model's logit with the Jaccard overlap {correlation:.3f}\n")
    print("| scorer | test ROC-AUC |\n|---|---:|")
    for name, auc in rows.items():
        print(f"| {name} | {auc:.4f} |")


if __name__ == "__main__":
    main()
