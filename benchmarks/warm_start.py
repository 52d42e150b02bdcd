"""Warm start against training from scratch: how much sooner does ``--init-from`` reach the from-scratch
validation AUC? The README's warm-start table.

On the time-aware synthetic market: a model is trained on the older part of the log (interactions and jobs
before its ``--older`` quantile in time, ``convfm.data.synth.older_part``) and published to a temporary
registry. Then, on the full log, the same model config trains for ``--epochs`` epochs from scratch and from the
published version (``convfm.training.warm_start``: vocabularies extended with the new ids, the published rows
kept); both in-process (``fit_in_process``, the epoch protocol of ``convfm train``), patience = epochs so both
run every epoch. Printed: validation ROC-AUC before training and after each epoch for both runs, then the
epochs and seconds (wall and CPU; training + per-epoch validation, from the first step) each needs to reach the
from-scratch run's best validation AUC.

    .venv/bin/python benchmarks/warm_start.py [--users 3000 --jobs 2000 --interactions 40000 --older 0.6
                                              --epochs 8 --old-epochs 8 --threads 1 --seed 0]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import PreparedData, prepare_data
from convfm.data.synth import generate_market, older_part, write_market
from convfm.model.network import ConvFM
from convfm.store.artifacts import save_model_dir
from convfm.store.registry import publish
from convfm.training.in_process import fit_in_process, validate
from convfm.training.warm_start import load_warm_start, warm_configs, warm_model


def timed_fit(name: str, data: PreparedData, model: ConvFM, config: TrainConfig) -> list[dict[str, Any]]:
    """Validation AUC of ``model`` before training (epoch 0), then of each epoch of ``fit_in_process`` from it,
    with the wall and CPU seconds since its first step (training + validation; CPU seconds of this process, what
    a shared box does not inflate); a progress line per epoch on stderr."""
    rows = [{"epoch": 0, "auc": validate(model, data, config)["model"]["roc_auc"], "seconds": 0.0, "cpu": 0.0}]
    started, cpu = time.perf_counter(), time.process_time()

    def record(epoch: dict[str, Any]) -> None:
        rows.append({"epoch": int(epoch["epoch"]) + 1, "auc": epoch["val_roc_auc"],
                     "seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu})
        print(f"{name}: epoch {rows[-1]['epoch']} val AUC {rows[-1]['auc']:.4f} at {rows[-1]['seconds']:.0f}s",
              file=sys.stderr, flush=True)

    fit_in_process(data, model.config, config, on_epoch=record, initial=model)
    return rows


def first_reaching(rows: list[dict[str, Any]], target: float) -> Optional[dict[str, Any]]:
    return next((row for row in rows if row["auc"] >= target), None)


def table(scratch: list[dict[str, Any]], warm: list[dict[str, Any]]) -> str:
    """Per epoch (0: before training) both runs' validation AUC, then epochs/seconds to the scratch best."""
    lines = ["| epoch | from scratch val AUC | warm start val AUC |", "|---:|---:|---:|"]
    lines += [f"| {a['epoch']} | {a['auc']:.4f} | {b['auc']:.4f} |" for a, b in zip(scratch, warm)]
    target = max(row["auc"] for row in scratch[1:])
    lines += ["", f"to reach the from-scratch best validation AUC {target:.4f}:"]
    for name, rows in (("from scratch", scratch), ("warm start", warm)):
        hit = first_reaching(rows, target)
        lines.append(f"  {name}: " + (f"not reached in {len(rows) - 1} epochs" if hit is None else
                                      f"epoch {hit['epoch']}, {hit['seconds']:.1f} s ({hit['cpu']:.1f} CPU s)"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--interactions", type=int, default=40_000)
    parser.add_argument("--older", type=float, default=0.6, help="the published model's share of the log, in "
                        "time (default 0.6)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each run on the full log")
    parser.add_argument("--old-epochs", type=int, default=8, help="epochs of the published model (early stopping "
                        "as TrainConfig's defaults)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_config = ModelConfig()
    full_config = TrainConfig(num_epochs=args.epochs, patience=args.epochs, seed=args.seed)
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        market = generate_market(args.users, args.jobs, args.interactions, seed=args.seed)
        write_market(market, root / "full")
        write_market(older_part(market, args.older), root / "old")
        split = {"split": "global_time", "seed": args.seed}
        old = prepare_data(DataConfig(path=str(root / "old"), **split))
        started = time.perf_counter()
        model, history = fit_in_process(old, model_config, TrainConfig(num_epochs=args.old_epochs, seed=args.seed))
        old_seconds = time.perf_counter() - started
        publish(save_model_dir(root / "export", model, old.extractor, metrics=history[-1]), root / "registry", "m")

        data = prepare_data(DataConfig(path=str(root / "full"), **split))
        torch.manual_seed(args.seed)
        scratch = timed_fit("from scratch", data, ConvFM(model_config, data.extractor.feature_map), full_config)
        warm = load_warm_start(str(root / "registry" / "m"))
        warm_data_config, _, notes = warm_configs(warm, DataConfig(path=str(root / "full"), **split), model_config)
        assert not notes, notes  # same configs: the comparison changes only the starting point
        warm_data = prepare_data(warm_data_config, base=warm.loaded.extractor)
        warm_rows = timed_fit("warm start", warm_data, warm_model(warm, warm_data.extractor.feature_map, args.seed),
                              TrainConfig(**{**full_config.to_dict(), "init_from": warm.location}))
    grown = {name: f"{len(old.extractor.vocabs[name])}->{len(v)}" for name, v in warm_data.extractor.vocabs.items()
             if name in ("user", "job", "skill")}
    print(f"{args.users} users, {args.jobs} jobs, {args.interactions} interactions, seed {args.seed}, split "
          f"global_time, {args.threads} thread(s); published model: the log's first {args.older:.0%} in time "
          f"({len(old.sets['train'])} training examples), {len(history)} epochs in {old_seconds:.0f}s, best val "
          f"AUC {max(r['val_roc_auc'] for r in history):.4f}; full log: {len(data.sets['train'])} training "
          f"examples, vocabulary sizes (published->warm) {grown}; default model and train config, "
          f"patience {args.epochs}\n")
    print(table(scratch, warm_rows))


if __name__ == "__main__":
    main()
