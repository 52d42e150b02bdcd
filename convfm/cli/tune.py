"""`convfm tune`: hyperparameter search with Ray Tune (ASHA + Optuna/HyperOpt/random), best model published.

Configs and the search space are read and validated here, before Ray is imported or started: a bad field
or a bad ``space:`` entry fails in a second with a message naming it. The Ray side lives in ``tune.runner``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from convfm.cli.common import add_data_arguments, config_file, data_config, model_and_train_configs
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.store.storage import join, local_or_uri, parent
from convfm.store.registry import latest_note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="config with data/model/train/tune/space sections "
                        "(e.g. configs/tune.yaml; default: built-in defaults)")
    add_data_arguments(parser)
    parser.add_argument("--samples", type=int, metavar="N", help="trials to run (tune.num_samples)")
    parser.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once, at most "
                        "(tune.max_concurrent; lowered to what the cluster's CPUs/GPUs hold)")
    parser.add_argument("--workers-per-trial", type=int, metavar="N", help="Ray Train workers per trial "
                        "(tune.workers_per_trial)")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs per trial at most (tune.max_t)")
    parser.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (tune.use_gpu)")
    parser.add_argument("--seed", type=int, metavar="N", help="search seed: same seed, same trial configs "
                        "(tune.seed)")
    parser.add_argument("--out", metavar="DIR", help="experiment directory, local or a URI such as "
                        "s3://bucket/runs/NAME (default runs/tune-YYYYmmdd-HHMMSS)")
    parser.add_argument("--registry", metavar="DIR", help="model registry root, local or a URI (tune.registry, "
                        "default models)")
    parser.add_argument("--name", metavar="NAME", help="model name in the registry (tune.name, default convfm)")
    parser.add_argument("--address", metavar="ADDR", help="join a Ray cluster: 'auto', HOST:PORT or ray://HOST:10001 "
                        "(default: $RAY_ADDRESS if set, as in a `ray job submit` job; else a new local Ray)")
    parser.add_argument("--resume", metavar="DIR", help="continue the interrupted search in DIR (path or URI) with its "
                        "configs (--data may point at the same data's new location)")


# TuneConfig field -> the flag that overrides it
FLAGS = {"num_samples": "--samples", "max_concurrent": "--max-concurrent", "workers_per_trial": "--workers-per-trial",
         "max_t": "--epochs",
         "use_gpu": "--gpu", "seed": "--seed", "registry": "--registry", "name": "--name"}


def _tune_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in FLAGS.items()}
    return {field: value for field, value in values.items() if value is not None}


def load_tune_config(path: Optional[str]) -> Any:
    """The ``tune:`` section with the top-level ``space:`` section as its ``space`` field."""
    from tune.config import TuneConfig  # Ray-free

    if not path:
        return TuneConfig()
    file = config_file(path)
    values = file.section("tune")
    if "space" in file.document:
        if "space" in values:
            raise ConfigError(f"{file.where('tune', 'space')}: space: give the search space once, as the "
                              "top-level 'space:' section", field="space")
        values = {**values, "space": file.document["space"] or {}}
    return file.build(TuneConfig, values, "tune", lifted=("space",))


def resolve_configs(args: argparse.Namespace) -> tuple[DataConfig, ModelConfig, TrainConfig, Any, str | Path]:
    """The four configs and the experiment directory, validated; ConfigError names the bad field."""
    from tune.config import TuneConfig

    if args.resume:
        from tune.results import read_experiment  # Ray-free

        given = [flag for flag, value in (("--out", args.out), ("--table", args.table), ("--config", args.config))
                 if value] + [FLAGS[field] for field in _tune_overrides(args)]
        if given:
            raise ConfigError(f"--resume: a resumed search keeps its directory and configs; drop {', '.join(given)}")
        out_dir = local_or_uri(args.resume)
        saved = read_experiment(out_dir)
        source = f"{out_dir}/experiment.json"
        data = DataConfig.from_dict(saved["data"], source=f"{source} [data]")
        if args.data:
            data = DataConfig.from_dict({**data.to_dict(), "path": args.data})
        return (data, ModelConfig.from_dict(saved["model"], source=f"{source} [model]"),
                TrainConfig.from_dict(saved["train"], source=f"{source} [train]"),
                TuneConfig.from_dict(saved["tune"], source=f"{source} [tune]"), out_dir)
    data = data_config(args, args.config)
    model, train = model_and_train_configs(args.config)
    tune = load_tune_config(args.config)
    tune = TuneConfig.from_dict({**tune.to_dict(), **_tune_overrides(args)}, source="command line")
    tune.trial_base(model, train)  # the space against these base configs, still before Ray
    out_dir = local_or_uri(args.out or f"runs/tune-{time.strftime('%Y%m%d-%H%M%S')}")
    return data, model, train, tune, out_dir


def run(args: argparse.Namespace) -> int:
    data, model, train, tune, out_dir = resolve_configs(args)  # fails here, before Ray, on a bad field

    from tune.results import format_trials
    from tune.runner import SearchInterrupted, run_tune

    print(f"{'resuming' if args.resume else 'searching'} {tune.num_samples} trial(s) ({tune.search_alg}, "
          f"ASHA on {tune.metric}, up to {tune.max_t} epochs each, {tune.workers_per_trial} "
          f"{'GPU' if tune.use_gpu else 'CPU'} worker(s) per trial) on {data.path} -> {out_dir}", flush=True)
    try:  # `kill` stops it as Ctrl-C does: Tune saves the search, exit 130, resumable
        summary = run_tune(data, model, train, tune, out_dir, resume=bool(args.resume), address=args.address,
                           progress=True, quiet=not args.debug, sigterm_interrupts=True)
    except SearchInterrupted as exc:  # an interrupted command, not an error: the line says how to go on
        print(f"convfm tune: {exc}", file=sys.stderr)
        return 130
    best = summary.trials.set_index("trial_id").loc[summary.best_trial]
    print(f"\n{format_trials(summary.trials, tune.metric, summary.best_trial)}\n")
    print(f"best trial {summary.best_trial}: {tune.metric} {best[f'best_{tune.metric}']:.4f} at epoch "
          f"{int(best['best_epoch'])}; {int(summary.trials['stopped_by_asha'].sum())} of {len(summary.trials)} "
          f"trial(s) stopped by ASHA; {summary.concurrency} at a time; wall time {summary.wall_seconds:.1f}s")
    entry = parent(summary.model_dir)
    print(f"published: {summary.model_dir}  ({latest_note(summary.model_dir)})")
    print(f"table: {join(out_dir, 'trials.csv')}  plot: {join(out_dir, 'trials.png')}  "
          f"summary: {join(out_dir, 'summary.json')}")
    print(f"\nNext: convfm serve --model {entry}")
    return 0
