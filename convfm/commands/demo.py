"""`convfm demo`: the newcomer's tour on synthetic data, stage by stage."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from convfm.artifacts import save_model_dir
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.evaluation import evaluate_split
from convfm.metrics import format_report
from convfm.prepare import prepare_data
from convfm.synth import generate_market, write_market
from convfm.trainer import fit_in_process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", metavar="DIR", help="where data and models go")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    parser.add_argument("--jobs", type=int, default=1000, help="synthetic jobs (default 1000)")
    parser.add_argument("--interactions", type=int, default=60_000, help="synthetic interactions (default 60000)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
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

    started = stage(3, f"train ConvFM in-process for up to {args.epochs} epochs")
    model_config = ModelConfig()
    train_config = TrainConfig(num_epochs=args.epochs, patience=3, seed=args.seed)

    def show(record: dict[str, float]) -> None:
        print(f"   epoch {int(record['epoch']) + 1}: train_loss {record['train_loss']:.4f}  "
              f"val_auc {record['val_roc_auc']:.4f}  val_ndcg@10 {record['val_ndcg@10']:.4f}  "
              f"({record['samples_per_s']:.0f} samples/s)", flush=True)

    model, history = fit_in_process(data, model_config, train_config, on_epoch=show)
    model_dir = save_model_dir(
        workdir / "model", model, data.extractor, metrics=history[-1],
        extra_json={"train_config": train_config.to_dict(), "data_config": data_config.to_dict()},
    )
    print(f"   saved {model_dir} ({time.perf_counter() - started:.1f}s)")

    stage(4, "evaluate on the held-out test split")
    print(format_report(evaluate_split(model, data, "test", negatives=train_config.eval_negatives, seed=args.seed)))
    print(f"\nNext: convfm evaluate --model {model_dir} --split test")
    return 0
