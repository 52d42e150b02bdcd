"""`convfm predict`: a table model's click probability for each row of a file (labelled or not).

Job-market models rank catalogs instead: the service's `/recommend` and `/score`, or `convfm recommend-batch`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convfm.errors import ConfigError

BATCH = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="a table model: model directory, registry "
                        "entry (models/NAME: its latest) or version; local or a URI")
    parser.add_argument("--input", required=True, metavar="FILE", help="rows to score: .csv, .tsv or .parquet "
                        "holding the model's field columns (a label column, and any other, is kept as it is)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the rows with a 'score' column added, "
                        ".csv or .parquet; an existing file is never overwritten")


def run(args: argparse.Namespace) -> int:
    import torch

    from convfm.config import DataConfig
    from convfm.data.labelled import check_fields, typed_fields
    from convfm.data.readers import read_located
    from convfm.errors import ArtifactError
    from convfm.store.artifacts import load_model_dir
    from convfm.store.registry import resolve
    from convfm.store.storage import exists
    from convfm.training.epoch import predict_proba

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: write a .csv or .parquet file")
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; choose a new file (outputs are never overwritten)")
    if not exists(args.model):
        raise ArtifactError(f"{args.model}: model directory not found")
    loaded = load_model_dir(resolve(args.model))
    extractor = loaded.extractor
    if getattr(extractor, "kind", None) != "table":
        raise ConfigError(f"--model {args.model}: a job-market model ranks catalogs: use `convfm serve` "
                          "(/recommend, /score) or `convfm recommend-batch`")
    fields = extractor.get_config()
    config = DataConfig(kind="table", categorical=tuple(fields["categorical"]),
                        multi_valued=tuple(fields["multi_valued"]), numeric=tuple(fields["numeric"]),
                        separator=fields["separator"])
    frame, path = read_located(args.input)
    check_fields(path, list(frame.columns), config)
    rows = typed_fields(frame, path, config)
    rows["label"] = 0.0  # no label is read: the scores do not depend on it
    scores = predict_proba(loaded.model, extractor.example_set(rows), BATCH, torch.device("cpu"))
    scored = frame.reset_index(drop=True).assign(score=scores)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    if out.suffix.lower() == ".csv":
        scored.to_csv(partial, index=False)
    else:
        scored.to_parquet(partial, index=False)
    partial.rename(out)  # a reader never sees half a file
    print(f"scored {len(scored):,} rows of {path} with {args.model}: mean score {scores.mean():.4f} -> {out}")
    return 0
