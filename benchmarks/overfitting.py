"""Does training overfit? Validation log loss past its best epoch, per setting, on a table, a market and an app log.

For each dataset (``table``: ``configs/table_example.yaml``; ``market``: a synthetic market split by one
calendar, ``split: global_time``; ``apps``: the app-usage log of ``benchmarks/app_usage.py``, where ids carry
the signal) and each setting (ModelConfig / TrainConfig fields over the defaults), trains in-process
(``fit_in_process``, the epoch protocol of ``convfm train``, no Ray) with early stopping as configured, and prints
one row per setting: epochs run; the epoch of the lowest validation log loss, that loss and the last epoch's; the
rise past it (the highest validation log loss of a later epoch, % above the lowest); the best validation AUC; the
epoch, log loss and AUC of the model the run keeps (the early-stopping metric's best epoch); and the weight decay
the run applied (``TrainConfig.weight_decay_for`` its training examples).

    .venv/bin/python benchmarks/overfitting.py [--datasets table,market,apps] [--users 3000 --jobs 4000
        --interactions 20000] [--apps-uses 100000] [--epochs N] [--patience N]
        [--settings "default;embedding_l2=0,patience=100"]

(all three datasets by default)

A setting is ``default`` or ``field=value,field=value`` (values read as YAML); settings are separated by ``;``.
``--epochs``/``--patience`` replace num_epochs/patience for every setting that does not set them itself.
Ranking metrics are computed each epoch on ``--eval-max-events`` positives only (they are not reported here).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from convfm.cli.common import load_table_spec
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.training.in_process import fit_in_process
from tune.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_usage  # noqa: E402  (the sibling benchmark's generator)

TABLE_SPEC = Path(__file__).resolve().parents[1] / "configs" / "table_example.yaml"
# TrainConfig's defaults; the same with the embedding L2 penalty; the defaults before issue 13
DEFAULT_SETTINGS = "default;embedding_l2=0.001;weight_decay=0,early_stopping_metric=roc_auc,patience=10"


def parse_settings(text: str) -> list[tuple[str, dict[str, Any]]]:
    """"default;embedding_l2=0,patience=3;hidden_dims=[64,32]" -> [(label, {field: value})]: a comma starts a new
    field only where a ``name=`` follows it, so YAML lists keep theirs."""
    settings = []
    for label in (part.strip() for part in text.split(";") if part.strip()):
        items = re.split(r",(?=\s*\w+\s*=)", label)
        if label != "default" and not all("=" in item for item in items):
            raise SystemExit(f"--settings: {label!r} is not 'default' or 'field=value,field=value'")
        values = {} if label == "default" else dict(item.split("=", 1) for item in items)
        settings.append((label, {key.strip(): yaml.safe_load(value) for key, value in values.items()}))
    return settings


def curve_row(history: list[dict[str, Any]], kept_epoch: int) -> dict[str, Any]:
    """One run's history -> the table's numbers (epochs 1-based)."""
    losses = [r["val_log_loss"] for r in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    later = losses[best + 1:]
    kept = history[kept_epoch]
    return {"epochs": len(history), "best_epoch": best + 1, "best_loss": losses[best], "last_loss": losses[-1],
            "rise": (max(later) / losses[best] - 1) * 100 if later else 0.0,
            "best_auc": max(r["val_roc_auc"] for r in history), "kept_epoch": kept_epoch + 1,
            "kept_loss": kept["val_log_loss"], "kept_auc": kept["val_roc_auc"], "decay": kept["weight_decay"]}


def run(data: PreparedData, values: dict[str, Any], epochs: Optional[int], patience: Optional[int],
        eval_max_events: int) -> dict[str, Any]:
    base = TrainConfig(eval_max_events=eval_max_events, **{k: v for k, v in (("num_epochs", epochs),
                                                                              ("patience", patience)) if v})
    model_config, train_config = SearchSpace.apply(ModelConfig(), base, values)
    started = time.perf_counter()
    _, history = fit_in_process(data, model_config, train_config)
    row = curve_row(history, int(history[-1]["best_epoch"]))
    return {**row, "seconds": time.perf_counter() - started}


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n{title}\n")
    print("| setting | epochs run | best log-loss epoch | best val log loss | last val log loss | rise past best "
          "| best val AUC | kept epoch | kept val log loss | kept val AUC | weight decay applied | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['epochs']} | {r['best_epoch']} | {r['best_loss']:.4f} | {r['last_loss']:.4f} | "
              f"{r['rise']:.1f}% | {r['best_auc']:.4f} | {r['kept_epoch']} | {r['kept_loss']:.4f} | "
              f"{r['kept_auc']:.4f} | {r['decay']:.3g} | {r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="table,market,apps", help="comma-separated: table, market, apps")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="';'-separated settings (see above)")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--interactions", type=int, default=20_000)
    parser.add_argument("--apps-uses", type=int, default=100_000, help="logged uses of the apps dataset")
    parser.add_argument("--epochs", type=int, help="num_epochs of every setting (default: TrainConfig's)")
    parser.add_argument("--patience", type=int, help="patience of every setting (default: TrainConfig's)")
    parser.add_argument("--eval-max-events", type=int, default=100, help="live protocol positives per epoch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: OMP_NUM_THREADS, else all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = parse_settings(args.settings)
    for dataset in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            if dataset == "table":
                data, title = prepare_data(load_table_spec(TABLE_SPEC)), f"table example ({TABLE_SPEC.name})"
            elif dataset == "market":
                write_market(generate_market(args.users, args.jobs, args.interactions, seed=0), workdir)
                data = prepare_data(DataConfig(path=workdir, split="global_time"))
                title = f"synthetic market, {args.users} users, {args.jobs} jobs, {args.interactions} interactions"
            elif dataset == "apps":
                frame = app_usage.generate(uses=args.apps_uses)
                data = prepare_data(load_table_spec(app_usage.write(Path(workdir), frame)))
                auc, loss = app_usage.truth_scores(frame)
                title = (f"app-usage log (benchmarks/app_usage.py, {args.apps_uses} uses; the truth over all rows: "
                         f"ROC-AUC {auc:.4f}, log loss {loss:.4f})")
            else:
                parser.error(f"--datasets: unknown dataset {dataset!r}; use table, market and/or apps")
            rows = [(label, run(data, values, args.epochs, args.patience, args.eval_max_events))
                    for label, values in settings]
        print_table(f"{title}: examples {data.summary()}", rows)


if __name__ == "__main__":
    main()
