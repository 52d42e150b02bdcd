"""What is left for the model to learn? Stacking probes of the trained default model on the quality market.

Trains the default ConvFM on ``benchmarks/quality.py``'s market (same sizes, seed and split) once per
``--inits`` seed of its initial weights, then stacks the first model's logit with signals it does not see as
such: a logistic regression fitted on the validation split, reported as test ROC-AUC. A signal whose stack beats
the model alone is one a feature could add; one that does not is already in the logit, or carries nothing.

- passed over: the user's logged events before t that were not positives (the jobs shown and passed over), with
  their positives before t and the smoothed rate between them: how much a user applies, the user bias of the
  synthetic truth (``benchmarks/observable_ceiling.py``: worth 0.006 there, with the truth's own probabilities);
- residual bias: the same estimate from the model's own errors, sum(y - p) / (4 + sum p (1 - p)) over the
  user's logged events before t (the observable ceiling's estimate, with the model in place of the truth);
- location and level: users.csv's location equal to the job's (or a remote job), and the gap between the
  two experience levels, the truth's two other user-job terms without a pair term in the model;
- skill overlap: the Jaccard overlap and the count of shared skills between the ``skills`` columns of users.csv
  and jobs.csv, the truth's largest term (what showed that the model needed its skill-match term).

Then the generator's own formula with every latent input replaced by what the data shows (the observable
ceiling's "all as observed" row), stacked whole and term by term: whether the model misses a piece of the
formula's structure (one term lifts the stack) or learns every piece a little short (the whole formula lifts it,
no single term does). Its nine static terms only (the history terms need the user's positives before t); terms
constant as observed (the user bias, unobserved) are left out.

With ``--inits`` above 1 it also reports each model's test ROC-AUC and that of their mean logit (an ensemble),
alone and stacked with every signal: the spread between initial weights, and what averaging it away is worth.

    .venv/bin/python benchmarks/stacking_probe.py [--inits 4] [--threads 2] [--seed 0] [--epochs 50]
        [--ema-decay 0.99]

Models train as TrainConfig does: up to ``--epochs`` (50), early stopping on validation log loss decides.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import LEVELS, SyntheticMarket, generate_market, write_market
from convfm.data.synth_oracle import FEATURES, MarketOracle, base_logit
from convfm.data.synth_time import EPOCH
from convfm.data.synth_vocab import REMOTE
from convfm.features.text import split_lists
from convfm.training.epoch import predict_proba
from convfm.training.in_process import fit_in_process

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's observed inputs, not a copy
from observable_ceiling import observable_parts, with_parts  # noqa: E402

SPLITS = ("valid", "test")
STATIC_TERMS = FEATURES[:9]  # the truth's terms before the history ones


def logits_of(data: PreparedData, init: int, epochs: int,
              ema_decay: float = TrainConfig.ema_decay) -> dict[str, np.ndarray]:
    """Split name (train, valid, test) -> logits of the default model trained with initial-weight seed ``init``."""
    model, _ = fit_in_process(data, ModelConfig(), TrainConfig(num_epochs=epochs, seed=init, ema_decay=ema_decay))
    out = {}
    for split in ("train", *SPLITS):
        p = np.clip(predict_proba(model, data.sets[split], 4096, torch.device("cpu")), 1e-7, 1 - 1e-7)
        out[split] = np.log(p / (1 - p))
    return out


def before(events: pd.DataFrame, values: np.ndarray, examples: pd.DataFrame) -> np.ndarray:
    """Per example: the sum of ``values`` over the events of its user strictly before its time. ``events`` has
    user_id and timestamp (int64) columns, ``values`` (E, K) -> (N, K)."""
    order = np.lexsort((events["timestamp"].to_numpy(), events["user_id"].to_numpy()))
    users, times = events["user_id"].to_numpy()[order], events["timestamp"].to_numpy(np.int64)[order]
    running = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values[order], axis=0)])
    key = pd.Index(np.unique(users))
    user_code, query_code = key.get_indexer(users), key.get_indexer(examples["user_id"].to_numpy())
    span = np.int64(times.max() - times.min() + 3)  # per user: event offsets 1..range+1, a query up to range+2
    keys = user_code.astype(np.int64) * span + (times - times.min() + 1)
    query_time = np.clip(examples["timestamp"].to_numpy(np.int64) - times.min() + 1, 0, span - 1)
    end = np.searchsorted(keys, np.where(query_code >= 0, query_code * span + query_time, -1))
    start = np.searchsorted(keys, np.where(query_code >= 0, query_code * span, -1))
    return running[end] - running[start]


def signals(market: SyntheticMarket, data: PreparedData, logits: dict[str, np.ndarray], workdir: Path
            ) -> dict[str, dict[str, np.ndarray]]:
    """Signal name -> split -> (N, K) columns of the examples of that split."""
    log = market.interactions.assign(timestamp=pd.to_datetime(market.interactions["timestamp"])
                                     .to_numpy("datetime64[us]").astype(np.int64))
    positive = log["event"].isin(DataConfig().positive_events).to_numpy(float)
    frames = {split: data.frames[split] for split in ("train", *SPLITS)}
    # the model's errors on the user's logged events (the examples that are impressions, every split)
    shown = pd.MultiIndex.from_frame(log[["user_id", "job_id"]]).unique()
    logged = pd.concat([f.assign(p=1 / (1 + np.exp(-logits[s])))[pd.MultiIndex.from_frame(f[["user_id", "job_id"]])
                                                                 .isin(shown)] for s, f in frames.items()])
    errors = np.column_stack([logged["label"] - logged["p"], logged["p"] * (1 - logged["p"])])
    users = pd.read_csv(workdir / "users.csv", dtype=str).set_index("user_id")
    jobs = pd.read_csv(workdir / "jobs.csv", dtype=str).set_index("job_id")
    level = {name: i for i, name in enumerate(LEVELS)}
    out: dict[str, dict[str, np.ndarray]] = {"passed over": {}, "residual bias": {}, "location and level": {},
                                             "skill overlap": {}}
    for split in SPLITS:
        f = frames[split]
        counts = before(log, np.column_stack([positive, 1 - positive]), f)  # (N, 2): positives, passed over
        out["passed over"][split] = np.column_stack([np.log1p(counts), (counts[:, 0] + 0.3) / (counts.sum(1) + 1),
                                                     counts[:, 1] == 0])
        residual, information = before(logged, errors, f).T
        out["residual bias"][split] = np.column_stack([residual / (4 + information), residual])
        u, j = users.reindex(f["user_id"]), jobs.reindex(f["job_id"])
        home, where = u["location"].fillna("").to_numpy(), j["location"].fillna("").to_numpy()
        gap = np.abs(u["experience_level"].map(level).fillna(1).to_numpy()
                     - j["experience_level"].map(level).fillna(1).to_numpy())
        out["location and level"][split] = np.column_stack([((home == where) & (home != "")) | (where == REMOTE),
                                                            gap, gap == 0])
        overlap = skill_overlap(f, users["skills"], jobs["skills"])
        out["skill overlap"][split] = np.column_stack([overlap, np.log1p(overlap[:, 1])])
    return out


def skill_overlap(examples: pd.DataFrame, users: pd.Series, jobs: pd.Series) -> np.ndarray:
    """(N, 2): Jaccard overlap and shared-skill count of each example's user and job skills (user id / job id
    -> ";"-separated skills; unknown ids have none)."""
    mine = [set(s) for s in split_lists(users.reindex(examples["user_id"]).fillna("").to_numpy())]
    theirs = [set(s) for s in split_lists(jobs.reindex(examples["job_id"]).fillna("").to_numpy())]
    shared = np.array([len(a & b) for a, b in zip(mine, theirs)], dtype=np.float64)
    union = np.array([len(a | b) for a, b in zip(mine, theirs)], dtype=np.float64)
    return np.stack([shared / np.maximum(union, 1), shared], axis=1)


def observed_oracle(market: SyntheticMarket) -> MarketOracle:
    """The market's oracle with every latent input replaced by what the data shows."""
    return with_parts(market.oracle, list(observable_parts(market).values()))


def formula_terms(observed: MarketOracle, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The logit of ``observed`` (an oracle) for each example of ``frame``: the whole formula (intercept and
    history terms included) and each static term unweighted -> (N,) each."""
    times = frame["timestamp"].to_numpy(np.int64)
    p = observed.score(frame["user_id"].to_numpy(), frame["job_id"].to_numpy()[:, None], times)[:, 0]
    out = {"observable formula": np.log(p / (1 - p))}
    u = pd.Index(observed.user_ids).get_indexer(frame["user_id"])
    j = pd.Index(observed.job_ids).get_indexer(frame["job_id"])[:, None]
    seconds = (times - EPOCH.astype("datetime64[us]").astype(np.int64)) / 1e6
    for k, name in enumerate(STATIC_TERMS):
        weights = np.zeros_like(observed.weights)
        weights[k] = 1.0
        out[name] = base_logit(observed.users, observed.jobs, weights, observed.freshness_days, observed.remote,
                               u, j, seconds)[:, 0]
    return out


def stacked_auc(logit: dict[str, np.ndarray], extra: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> float:
    """Test ROC-AUC of a logistic regression of [logit, extra] fitted on the validation split."""
    x = {split: np.column_stack([logit[split], extra[split]]) for split in SPLITS}
    fitted = LogisticRegression(C=10.0, max_iter=3000).fit(x["valid"], labels["valid"])
    return roc_auc_score(labels["test"], fitted.predict_proba(x["test"])[:, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=TrainConfig.num_epochs, help="most epochs (early stopping "
                        "decides)")
    parser.add_argument("--seed", type=int, default=0, help="the market's and the split's seed")
    parser.add_argument("--inits", type=int, default=1, help="models trained, initial-weight seeds 0..N-1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay, help="the weight average's decay "
                        f"(default {TrainConfig.ema_decay}; 0: the raw weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    market = generate_market(args.users, args.jobs, args.interactions, seed=args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        write_market(market, workdir)
        data = prepare_data(DataConfig(path=workdir, seed=args.seed, split="global_time"))
        runs = [logits_of(data, init, args.epochs, args.ema_decay) for init in range(args.inits)]
        found = signals(market, data, runs[0], Path(workdir))
    observed = observed_oracle(market)
    terms = {split: formula_terms(observed, data.frames[split]) for split in SPLITS}
    labels = {split: data.frames[split]["label"].to_numpy() for split in SPLITS}
    print(f"{args.users} users, {args.jobs} jobs, {args.interactions} interactions, seed {args.seed}; default model, "
          f"at most {args.epochs} epochs, ema_decay {args.ema_decay:g}, {args.threads} thread(s); split global_time; "
          f"test examples {len(labels['test'])}\n")
    print("| scorer | test ROC-AUC |\n|---|---:|")
    print(f"| model (initial weights 0) | {roc_auc_score(labels['test'], runs[0]['test']):.4f} |")
    for name, extra in found.items():
        print(f"| model + {name} (stacked on valid) | {stacked_auc(runs[0], extra, labels):.4f} |")
    every = {split: np.hstack([extra[split] for extra in found.values()]) for split in SPLITS}
    print(f"| model + all of them | {stacked_auc(runs[0], every, labels):.4f} |")
    formula = {split: terms[split]["observable formula"] for split in SPLITS}
    print(f"| the observable formula alone | {roc_auc_score(labels['test'], formula['test']):.4f} |")
    print(f"| model + the observable formula | {stacked_auc(runs[0], formula, labels):.4f} |")
    varying = [n for n in STATIC_TERMS if np.ptp(terms["valid"][n]) > 0 and np.ptp(terms["test"][n]) > 0]
    for name in varying:
        print(f"| model + formula term {name} | "
              f"{stacked_auc(runs[0], {s: terms[s][name] for s in SPLITS}, labels):.4f} |")
    every_term = {split: np.column_stack([terms[split][n] for n in varying]) for split in SPLITS}
    print(f"| model + every formula term | {stacked_auc(runs[0], every_term, labels):.4f} |")
    if args.inits > 1:
        aucs = [roc_auc_score(labels["test"], run["test"]) for run in runs]
        mean = {split: np.mean([run[split] for run in runs], axis=0) for split in SPLITS}
        print(f"\n{args.inits} initial-weight seeds: test ROC-AUC " + ", ".join(f"{a:.4f}" for a in aucs)
              + f"; mean {np.mean(aucs):.4f}, standard deviation {np.std(aucs, ddof=1):.4f}")
        print(f"their mean logit (an ensemble): ROC-AUC {roc_auc_score(labels['test'], mean['test']):.4f}, "
              f"log loss {log_loss(labels['test'], 1 / (1 + np.exp(-mean['test']))):.4f}; stacked with all the "
              f"signals: ROC-AUC {stacked_auc(mean, every, labels):.4f}")


if __name__ == "__main__":
    main()
