"""Model quality on the synthetic market beside every baseline (popularity, recent popularity, newest first and
the oracle: the generator's true probabilities): the README's quality table.

Trains the default ConvFM in-process (no Ray) with early stopping as configured (TrainConfig), then evaluates the kept
epoch on the test split under the live protocol (each positive against every job live at its time that the user
never interacted with, at most ``--max-events`` positives) and, for comparison, the sampled protocol (each user's
last positive against ``--negatives`` sampled unseen jobs). Each table is headed by its protocol line.

    .venv/bin/python benchmarks/quality.py [--users 10000 --jobs 20000 --interactions 50000 --epochs 50
                                           --split global_time --seed 0] [--cluster-column]
                                           [--user-skills column|text|none]

The default market is ``convfm data synth``'s; the default split is one calendar for everyone (train before T1,
validation up to T2, test after), how a deployed model meets the future. ``--cluster-column`` writes each job's
and each user's latent skill cluster (which the truth reads and the files otherwise do not show) as a
``cluster`` column, declared in ``extra_columns``: what a board's own category (a discipline) is worth.
``--user-skills text`` replaces the users' ``skills`` column by a ``summary`` sentence naming them, declared as a
users text column (a board with resumes and no skills column); ``none`` drops it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from convfm.config import SPLITS, DataConfig, ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split, format_report
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.errors import ConfigError
from convfm.training.in_process import fit_in_process


VARIANTS = {  # ablation rows: (history_length, recency, popularity)
    "static features": (0, False, False),
    "+ history": (None, False, False),
    "+ recency": (0, True, False),
    "all three": (None, True, False),
}
POPULAR = "all three + popularity"  # the row of --popularity-days N
ABLATION_METRICS = ("hr@10", "ndcg@10", "mrr", "roc_auc")


def ablation_table(reports: dict[str, dict]) -> str:
    """One row per model variant, then each baseline and the oracle (from the last report): live-protocol
    HR@10, NDCG@10, MRR and ROC-AUC on the test examples."""
    rows = [(name, report["model"]) for name, report in reports.items()]
    last = list(reports.values())[-1]
    rows += [(method, last[method]) for method in ("popularity", "recent_popularity", "newest", "oracle")
             if last.get(method)]
    cell = lambda section, key: "" if section.get(key) is None else f"{section[key]:.4f}"  # noqa: E731
    lines = ["| method | " + " | ".join(ABLATION_METRICS) + " |", "|---|" + "---:|" * len(ABLATION_METRICS)]
    for name, section in rows:
        if name == "oracle":
            section = {**section, "roc_auc": last.get("oracle_auc")}
        lines.append(f"| {name} | " + " | ".join(cell(section, key) for key in ABLATION_METRICS) + " |")
    return "\n".join(lines)


def write_clusters(market: Path) -> dict[str, dict[str, str]]:
    """Each job's and user's latent skill cluster (oracle.npz) as a ``cluster`` column of jobs.csv and users.csv
    -> the ``extra_columns`` that declares it."""
    oracle = np.load(market / "oracle.npz")
    for table, side in (("jobs", "job"), ("users", "user")):
        frame = pd.read_csv(market / f"{table}.csv", dtype=str, keep_default_na=False)
        cluster = dict(zip(oracle[f"{side}_ids"].tolist(), oracle[f"{side}_cluster"].tolist()))
        frame["cluster"] = [f"c{cluster[i]}" for i in frame[f"{side}_id"]]
        frame.to_csv(market / f"{table}.csv", index=False)
    return {"jobs": {"cluster": "category"}, "users": {"cluster": "category"}}


def rewrite_user_skills(market: Path, how: str) -> dict[str, dict[str, str]]:
    """users.csv's ``skills`` column as a ``summary`` sentence naming them (``how`` "text"), or dropped ("none")
    -> the ``extra_columns`` that declares the summary."""
    users = pd.read_csv(market / "users.csv", dtype=str, keep_default_na=False)
    if how == "text":
        users["summary"] = [f"I have worked with {', '.join(s.split(';'))}." if s else "" for s in users["skills"]]
    users.drop(columns=["skills"]).to_csv(market / "users.csv", index=False)
    return {"users": {"summary": "text"}} if how == "text" else {}


def overrides(options: list[str], flag: str) -> dict[str, object]:
    """KEY=VALUE options -> {key: YAML value}; a malformed one is a ConfigError naming the flag."""
    malformed = [o for o in options if "=" not in o]
    if malformed:
        raise ConfigError(f"{flag} takes KEY=VALUE, got {malformed}")
    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--split", choices=SPLITS, default="global_time", help="data split (default global_time)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.num_epochs, help=f"most epochs (default "
                        f"{TrainConfig.num_epochs}, as TrainConfig: early stopping decides)")
    parser.add_argument("--negatives", type=int, default=99, help="sampled protocol: unseen jobs per held-out "
                        "positive")
    parser.add_argument("--max-events", type=int, default=5000, help="live protocol: positives ranked")
    parser.add_argument("--ablation", action="store_true", help="also train without history and/or recency "
                        "features and print the ablation table (live protocol)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster-column", action="store_true", help="write the jobs' and users' latent skill "
                        "cluster as an extra column `cluster` (data.extra_columns) of both files")
    parser.add_argument("--user-skills", choices=("column", "text", "none"), default="column",
                        help="users' skills as the file's column (default), as a summary sentence declared a text "
                        "column (data.extra_columns), or none")
    parser.add_argument("--popularity-days", type=float, default=DataConfig.popularity_days,
                        help="also (with --ablation) or instead train with the job-popularity feature over this "
                        "window (data.popularity_days)")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field for every variant, a YAML value (repeatable; e.g. "
                        "history_match=false)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="override a DataConfig field for every variant, a YAML value (repeatable; e.g. "
                        "train_negative_ratio=4)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field, a YAML value (repeatable; e.g. lr_schedule=cosine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        model_config = ModelConfig.from_dict(overrides(args.model, "--model"), source="--model")
        data_options = overrides(args.data, "--data")
        DataConfig.from_dict(data_options, source="--data")  # a bad key or value fails before the market is made
        owned = sorted(set(data_options) & {"path", "seed", "split", "history_length", "recency", "popularity_days",
                                            *(["extra_columns"] if args.cluster_column or args.user_skills != "column"
                                              else [])})
        if owned:
            raise ConfigError(f"--data: {owned} are set by this benchmark's own flags or variants")
        train = TrainConfig.from_dict({"num_epochs": args.epochs, "seed": args.seed,
                                       **overrides(args.train, "--train")}, source="--train")
    except ConfigError as exc:
        parser.error(str(exc))
    variants = dict(VARIANTS) if args.ablation else {"all three": VARIANTS["all three"]}
    if args.popularity_days:
        variants = {**(variants if args.ablation else {}), POPULAR: (None, True, True)}
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        write_market(generate_market(args.users, args.jobs, args.interactions, seed=args.seed), workdir)
        if args.cluster_column:
            data_options["extra_columns"] = write_clusters(Path(workdir))
        if args.user_skills != "column":
            declared = rewrite_user_skills(Path(workdir), args.user_skills)
            extra = data_options.get("extra_columns", {})
            data_options["extra_columns"] = {**extra, "users": {**extra.get("users", {}), **declared.get("users", {})}}
        for name, (history, recency, popular) in variants.items():
            config = DataConfig(path=workdir, seed=args.seed, split=args.split, recency=recency,
                                popularity_days=args.popularity_days if popular else None,
                                **({} if history is None else {"history_length": history}), **data_options)
            data = prepare_data(config)
            started = time.perf_counter()
            model, history_log = fit_in_process(data, model_config, train)
            seconds = time.perf_counter() - started
            protocols = ("live", "sampled") if name == list(variants)[-1] else ("live",)
            by_protocol = {protocol: evaluate_split(model, data, "test", negatives=args.negatives, seed=args.seed,
                                                    protocol=protocol, max_events=args.max_events)
                           for protocol in protocols}
            reports[name] = by_protocol["live"]
            best = history_log[int(history_log[-1]["best_epoch"])]  # the epoch fit_in_process kept
            skills = '' if args.user_skills == 'column' else f'; user skills: {args.user_skills}'
            print(f"\n{name}{' + cluster column' if args.cluster_column else ''}{skills}: {args.users} users, "
                  f"{args.jobs} jobs, {args.interactions} interactions, seed "
                  f"{args.seed}; {'model ' + ', '.join(args.model) if args.model else 'default model'}; "
                  f"{'train ' + ', '.join(args.train) + '; ' if args.train else ''}"
                  f"history_length {config.history_length}, recency {config.recency}, "
                  f"popularity_days {config.popularity_days}, negative_ratio {config.negative_ratio}, "
                  f"train_negative_ratio {config.train_negative_ratio}; batch {train.batch_size}, learning rate "
                  f"{train.learning_rate:g}, weight decay {best['weight_decay']:.3g} applied, ema_decay "
                  f"{train.ema_decay:g}; {len(history_log)} epochs in "
                  f"{seconds:.0f}s, best epoch "
                  f"{int(best['epoch']) + 1} by validation {train.early_stopping_metric} (val AUC "
                  f"{best['val_roc_auc']:.4f}, log loss {best['val_log_loss']:.4f}); split {args.split}, examples "
                  f"{data.summary()}; test split; val AUC per epoch "
                  f"{' '.join(format(h['val_roc_auc'], '.4f') for h in history_log)}", flush=True)
            for report in by_protocol.values():
                print(f"\n{format_report(report)}", flush=True)
    if args.ablation:
        print(f"\nablation (live protocol, test split):\n{ablation_table(reports)}")


if __name__ == "__main__":
    main()
