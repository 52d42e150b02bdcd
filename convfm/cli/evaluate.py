"""`convfm evaluate`: metrics of a saved model on a split, beside the popularity baseline (and the oracle)."""
from __future__ import annotations

import argparse
from pathlib import Path

from convfm.store.artifacts import load_model_dir
from convfm.cli.common import add_data_arguments, load_table_spec
from convfm.config import EVAL_PROTOCOLS, DataConfig, TrainConfig
from convfm.errors import ArtifactError, ConfigError
from convfm.evaluation.report import evaluate_split, format_report
from convfm.jsonfile import write_json_atomic

from convfm.data.prepare import prepare_data
from convfm.store.registry import resolve
from convfm.store.storage import exists


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory (e.g. runs/NAME/best), "
                        "registry entry (models/NAME: its latest) or version (models/NAME/v0002); local or a "
                        "URI (s3://..., gs://...: downloaded to the local cache)")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test", help="split (default test)")
    parser.add_argument("--out", metavar="FILE", help="report JSON path (default: beside the model directory, "
                        "never inside it: runs/NAME/best.eval_SPLIT.json, models/NAME/v0002.eval_SPLIT.json; for a "
                        "URI model, beside its local cached copy)")
    parser.add_argument("--protocol", choices=EVAL_PROTOCOLS, help="ranking protocol: live (each positive vs every "
                        "job live at its time the user never saw) or sampled (each user's last positive vs "
                        "--negatives sampled unseen jobs); default: training's")
    parser.add_argument("--negatives", type=int, help="sampled protocol: negatives per ranked user (default: "
                        "training's)")
    parser.add_argument("--max-events", type=int, default=5000, help="live protocol: positives ranked, a seeded "
                        "sample (default 5000)")


def saved_data_config(model_dir: Path, args: argparse.Namespace) -> DataConfig:
    """The data config the model was trained with, with --data/--table overriding the source."""
    if args.table:
        return load_table_spec(args.table)
    config = DataConfig.load_json(model_dir / "data_config.json")
    if args.data:
        return DataConfig.from_dict({**config.to_dict(), "path": args.data})
    if not Path(config.path).expanduser().exists():  # a relative path read from another directory than training's
        raise ConfigError(f"{config.path}: data directory not found (the path {model_dir / 'data_config.json'} "
                          "saved at training, relative to where it ran); give --data DIR")
    return config


def _check_report_path(out: Path, model_dir: Path) -> None:
    """The report's path is a file outside the model directory, which holds exactly its manifest's files (a
    report written in it made every later load refuse the model)."""
    if out.is_dir():
        raise ConfigError(f"--out {out}: a directory; give the report's file path")
    if out.expanduser().resolve().is_relative_to(model_dir.expanduser().resolve()):
        raise ConfigError(f"--out {out}: inside the model directory {model_dir}, which must hold only its own files; "
                          "write the report beside it")


def run(args: argparse.Namespace) -> int:
    if not exists(args.model):  # the error a mistyped --model has always given
        raise ArtifactError(f"{args.model}: model directory not found")
    if args.negatives is not None and args.negatives < 1:
        raise ConfigError(f"--negatives: must be at least 1, got {args.negatives}")
    model_dir = resolve(args.model)  # entry -> latest, version, model dir; a URI is downloaded to the cache
    out = Path(args.out) if args.out else model_dir.with_name(f"{model_dir.name}.eval_{args.split}.json")
    _check_report_path(out, model_dir)  # before the evaluation, not after it
    loaded = load_model_dir(model_dir)
    train_config = TrainConfig.from_dict(loaded.extra.get("train_config", {}))
    data = prepare_data(saved_data_config(model_dir, args), extractor=loaded.extractor)
    report = evaluate_split(
        loaded.model, data, args.split,
        negatives=args.negatives if args.negatives is not None else train_config.eval_negatives,
        k=train_config.ranking_k, seed=train_config.seed,
        protocol=args.protocol or train_config.eval_protocol, max_events=args.max_events,
    )
    write_json_atomic(out, report)
    print(format_report(report))
    print(f"report written to {out}")
    return 0
