"""`convfm train`: data-parallel training with Ray Train (local CPU workers, GPUs, or a cluster).

Configs are read and validated here, before Ray is imported or started; the Ray side lives in
``train.driver`` and is imported only when a run actually starts.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from convfm.cli.common import add_data_arguments, config_file, data_config, model_and_train_configs
from convfm.data.partitioned import PREPARATIONS, choose_preparation
from convfm.config import PLACEMENT_STRATEGIES, DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from convfm.store.storage import local_or_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="config with data/model/train sections "
                        "(e.g. configs/train.yaml; default: built-in defaults)")
    add_data_arguments(parser)
    parser.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (train.num_workers)")
    parser.add_argument("--cpus-per-worker", type=float, metavar="N",
                        help="CPUs per worker, also its torch threads (train.cpus_per_worker, default 1)")
    parser.add_argument("--placement", choices=PLACEMENT_STRATEGIES, metavar="STRATEGY",
                        help="worker placement: PACK (default), SPREAD (one per node where possible), "
                        "STRICT_PACK, STRICT_SPREAD (train.placement_strategy)")
    parser.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (train.use_gpu)")
    parser.add_argument("--epochs", type=int, metavar="N", help="maximum epochs (train.num_epochs)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="global batch size (train.batch_size)")
    parser.add_argument("--out", metavar="DIR", help="run directory, local or a URI such as s3://bucket/runs/NAME "
                        "(default runs/train-YYYYmmdd-HHMMSS)")
    parser.add_argument("--address", metavar="ADDR", help="join a Ray cluster: 'auto', HOST:PORT or ray://HOST:10001 "
                        "(default: $RAY_ADDRESS if set, as in a `ray job submit` job; else a new local Ray)")
    parser.add_argument("--storage", metavar="PATH", help="checkpoint storage for Ray Train (shared path or "
                        "URI on multi-node clusters; default RUN/ray)")
    parser.add_argument("--init-from", metavar="MODEL", help="warm start from a published model: a registry "
                        "entry such as models/NAME (its latest), one of its versions, or a model directory, local or "
                        "a URI; its vocabularies grow with the new ids, its model config is used (train.init_from)")
    parser.add_argument("--prepare", choices=PREPARATIONS, default="auto",
                        help="where data is prepared: memory (the driver reads, fits and encodes, then ships shards), "
                        "distributed (a table's train/valid/test files, or a job market's interaction log, are "
                        "split, fitted and encoded on Ray Data and the workers stream their shards; for data beyond "
                        "the driver's memory), or auto (default: memory unless the table or the interaction log is "
                        "large or stored as part files; the run prints which and why)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in RUN (a path or URI) from its latest "
                        "checkpoint (its data and model; --epochs etc. may change)")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"num_workers": args.workers, "use_gpu": args.gpu, "num_epochs": args.epochs,
             "batch_size": args.batch_size, "cpus_per_worker": args.cpus_per_worker,
             "placement_strategy": args.placement, "init_from": args.init_from}
    return {key: value for key, value in flags.items() if value is not None}


def resolve_configs(args: argparse.Namespace) -> tuple[DataConfig, ModelConfig, TrainConfig, str | Path]:
    """The three configs and the run directory, validated; ConfigError names the bad field."""
    if args.resume:
        from train.outputs import read_run  # Ray-free

        if args.out or args.table or args.init_from:
            raise ConfigError("--resume: a resumed run keeps its directory, data and starting model; drop "
                              "--out/--table/--init-from (--data may point at the same data's new location)")
        out_dir = local_or_uri(args.resume)
        run = read_run(out_dir)
        data = DataConfig.from_dict(run["data"], source=f"{out_dir}/run.json [data]")
        if args.data:
            data = DataConfig.from_dict({**data.to_dict(), "path": args.data})
        model = ModelConfig.from_dict(run["model"], source=f"{out_dir}/run.json [model]")
        train = (config_file(args.config).load(TrainConfig, "train") if args.config
                 else TrainConfig.from_dict(run["train"], source=f"{out_dir}/run.json [train]"))
    else:
        data = data_config(args, args.config)
        model, train = model_and_train_configs(args.config)
        out_dir = local_or_uri(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    train = TrainConfig.from_dict({**train.to_dict(), **_train_overrides(args)}, source="command line")
    return data, model, train, out_dir


def run(args: argparse.Namespace) -> int:
    data, model, train, out_dir = resolve_configs(args)  # fails here, before Ray, on a bad field

    from train.driver import format_epoch, format_summary, run_training

    prepare, why = choose_preparation(data, args.prepare)
    where = args.address or "local Ray"
    print(f"training ConvFM on {data.path} with {train.num_workers} {'GPU' if train.use_gpu else 'CPU'} "
          f"worker(s) on {where}, up to {train.num_epochs} epochs -> {out_dir}"
          + (f", starting from {train.init_from}" if train.init_from else ""), flush=True)
    print(f"preparing data {'on the cluster (Ray Data)' if prepare == 'distributed' else 'in memory'}: {why}",
          flush=True)
    result = run_training(
        data, model, train, out_dir, address=args.address, resume=bool(args.resume),
        storage_path=args.storage, on_epoch=lambda record: print(format_epoch(record), flush=True),
        quiet=not args.debug, prepare=args.prepare,  # the driver decides as above and records why in run.json
        sigterm_interrupts=True,  # `kill` stops it as Ctrl-C does: "interrupted", exit 130, resumable
    )
    print(format_summary(result))
    held_out = (result.split_periods or {}).get("examples", {}).get("test", data.test_fraction)  # 0: none held out
    print(f"\nNext: convfm evaluate --model {result.best_dir} --split {'test' if held_out else 'valid'}")
    return 0
