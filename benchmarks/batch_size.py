"""Why the default batch size is 1024, not the seed's 32: throughput and validation AUC per wall-clock second.

Trains the default ConvFM in-process (no Ray) on the demo's synthetic market at several batch sizes for the same
wall-clock budget and prints, per batch size: samples/s (median epoch), epochs done, and the best validation
ROC-AUC reached within the budget.

    .venv/bin/python benchmarks/batch_size.py [--budget-s 60] [--runs 32@0.001,1024@0.004,...]

A run is ``SIZE`` (the default learning rate) or ``SIZE@LR``, to compare large batches with a raised rate.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.evaluation.report import evaluate_split
from convfm.model.network import ConvFM
from convfm.model.optim import build_optimizer
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.training.epoch import train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=60.0, help="training seconds per batch size")
    parser.add_argument("--runs", default="32@0.001,256@0.001,1024@0.001,1024@0.004,1024@0.01",
                        help="comma-separated SIZE (TrainConfig's learning rate) or SIZE@LEARNING_RATE")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--interactions", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        write_market(generate_market(args.users, args.jobs, args.interactions, seed=0), workdir)
        data = prepare_data(DataConfig(path=workdir))
        rows = []
        for run in args.runs.split(","):
            size_text, _, lr_text = run.partition("@")
            size, lr = int(size_text), float(lr_text or TrainConfig().learning_rate)
            torch.manual_seed(0)
            model = ConvFM(ModelConfig(), data.extractor.feature_map)
            optimizer = build_optimizer(model, lr)
            rates, best_auc, epochs, spent = [], float("nan"), 0, 0.0
            while spent < args.budget_s:
                stats = train_epoch(model, data.sets["train"], optimizer, size, torch.device("cpu"), epoch_seed=epochs)
                spent += stats["train_seconds"]
                rates.append(stats["samples"] / stats["train_seconds"])
                auc = evaluate_split(model, data, "valid", negatives=1, max_users=1)["model"]["roc_auc"]
                best_auc = auc if not best_auc >= auc else best_auc
                epochs += 1
            rows.append((size, lr, statistics.median(rates), epochs, spent, best_auc))
    print(f"\n{len(data.sets['train'])} training examples, default ModelConfig, budget {args.budget_s:.0f}s of training\n")
    print("| batch size | learning rate | samples/s (median epoch) | epochs in budget | training s | best val ROC-AUC |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, lr, rate, epochs, spent, auc in rows:
        print(f"| {size} | {lr:g} | {rate:,.0f} | {epochs} | {spent:.0f} | {auc:.4f} |")


if __name__ == "__main__":
    main()
