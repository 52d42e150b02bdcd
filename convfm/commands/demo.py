"""`convfm demo`: the newcomer's tour on synthetic data, stage by stage."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from convfm.artifacts import load_model_dir
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.evaluation import evaluate_split
from convfm.metrics import format_report
from convfm.prepare import prepare_data
from convfm.synth import generate_market, write_market


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", metavar="DIR", help="where data and models go")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    parser.add_argument("--jobs", type=int, default=1000, help="synthetic jobs (default 1000)")
    parser.add_argument("--interactions", type=int, default=60_000, help="synthetic interactions (default 60000)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def stage(number: int, title: str) -> float:
    print(f"\n== [{number}] {title}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    data_dir = workdir / "data"

    started = stage(1, f"synthesize a job market ({args.users} users, {args.jobs} jobs, {args.interactions} interactions)")
    write_market(generate_market(args.users, args.jobs, args.interactions, seed=args.seed), data_dir)
    print(f"   wrote {data_dir} in {time.perf_counter() - started:.1f}s")

    started = stage(2, "fit the feature extractor on the training split")
    data_config = DataConfig(path=str(data_dir), seed=args.seed)
    data = prepare_data(data_config)
    fields = ", ".join(f.name for f in data.extractor.feature_map.fields)
    print(f"   examples {data.summary()}; fields: {fields} ({time.perf_counter() - started:.1f}s)")

    started = stage(3, f"train ConvFM with Ray Train: {args.workers} CPU workers (DDP), up to {args.epochs} epochs")
    from train.driver import format_epoch, run_training  # Ray from here on; the library stays Ray-free

    run_dir = workdir / "train"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo owns its workdir: start a fresh run every time
    train_config = TrainConfig(num_epochs=args.epochs, patience=3, seed=args.seed, num_workers=args.workers)
    result = run_training(data_config, ModelConfig(), train_config, run_dir, prepared=data,
                          on_epoch=lambda record: print("   " + format_epoch(record), flush=True))
    best = result.best_metrics
    print(f"   best epoch {result.best_epoch + 1}: val_auc {best['val_roc_auc']:.4f} (popularity "
          f"{best.get('popularity_roc_auc', float('nan')):.4f}); model {result.best_dir}; "
          f"curves {run_dir / 'curves.png'} ({time.perf_counter() - started:.1f}s)")

    stage(4, "evaluate the best checkpoint on the held-out test split")
    loaded = load_model_dir(result.best_dir)
    print(format_report(evaluate_split(loaded.model, data, "test", negatives=train_config.eval_negatives,
                                       seed=args.seed)))
    print(f"\nNext: convfm evaluate --model {result.best_dir} --split test")
    return 0
