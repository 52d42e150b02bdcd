"""Model quality on the synthetic market beside every baseline (popularity, recent popularity, newest first and
the oracle: the generator's true probabilities): the README's quality table.

Trains the default ConvFM in-process (no Ray) with early stopping on validation AUC, then evaluates the best
epoch on the test split under the live protocol (each positive against every job live at its time that the user
never interacted with, at most ``--max-events`` positives) and, for comparison, the sampled protocol (each user's
last positive against ``--negatives`` sampled unseen jobs). Each table is headed by its protocol line.

    .venv/bin/python benchmarks/quality.py [--users 10000 --jobs 20000 --interactions 50000 --epochs 5
                                           --split global_time --seed 0]

The default market is ``convfm data synth``'s; the default split is one calendar for everyone (train before T1,
validation up to T2, test after), how a deployed model meets the future.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from convfm.config import SPLITS, DataConfig, ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split, format_report
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.training.in_process import fit_in_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=50_000)
    parser.add_argument("--split", choices=SPLITS, default="global_time", help="data split (default global_time)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=99, help="sampled protocol: unseen jobs per held-out "
                        "positive")
    parser.add_argument("--max-events", type=int, default=5000, help="live protocol: positives ranked")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train = TrainConfig(num_epochs=args.epochs, seed=args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        write_market(generate_market(args.users, args.jobs, args.interactions, seed=args.seed), workdir)
        data = prepare_data(DataConfig(path=workdir, seed=args.seed, split=args.split))
        started = time.perf_counter()
        model, history = fit_in_process(data, ModelConfig(), train)
        seconds = time.perf_counter() - started
        reports = {protocol: evaluate_split(model, data, "test", negatives=args.negatives, seed=args.seed,
                                            protocol=protocol, max_events=args.max_events)
                   for protocol in ("live", "sampled")}
    best = max(history, key=lambda r: r["val_roc_auc"])
    print(f"\n{args.users} users, {args.jobs} jobs, {args.interactions} interactions, seed {args.seed}; default "
          f"model; batch {train.batch_size}, learning rate {train.learning_rate:g}; {len(history)} epochs in "
          f"{seconds:.0f}s, best epoch {int(best['epoch']) + 1} (val AUC {best['val_roc_auc']:.4f}); split {args.split}, "
          f"examples {data.summary()}; test split")
    for report in reports.values():
        print(f"\n{format_report(report)}")


if __name__ == "__main__":
    main()
