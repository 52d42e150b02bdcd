"""How long the live-catalog protocol takes: E test positives, each ranked against the ~N jobs live at its time,
by the model (``CatalogRanker``'s fast path) and by every baseline.

The model is the default ConvFM, untrained (scoring costs the same whatever the weights). The market is sized so
that about ``--live`` jobs are live at a time: jobs are posted evenly over the 12-week timeline and live 30 days
(median), so a job count of ~3.8x the live target gives it.

    .venv/bin/python benchmarks/live_ranking.py [--events 1000 --live 10000 --users 20000 --seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from convfm.config import DataConfig, ModelConfig
from convfm.data.prepare import all_positives, prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.evaluation.live import (
    catalog_windows, evaluate_live, mean_live_jobs, newest_scorer, oracle_scorer, popularity_scorer,
    recent_popularity_scorer, select_events,
)
from convfm.evaluation.metrics import PopularityBaseline
from convfm.evaluation.report import model_scorer
from convfm.model.network import ConvFM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="test positives ranked")
    parser.add_argument("--live", type=int, default=10_000, help="target jobs live at a time")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jobs = int(args.live * 3.8)
    with tempfile.TemporaryDirectory() as workdir:
        write_market(generate_market(args.users, jobs, args.users * 5, seed=args.seed), workdir)
        data = prepare_data(DataConfig(path=workdir, seed=args.seed))
    model = ConvFM(ModelConfig(), data.extractor.feature_map).eval()
    catalog = np.asarray(data.catalog)
    windows = catalog_windows(catalog, data.windows)
    seen = pd.concat([f[["user_id", "job_id"]] for f in data.frames.values()], ignore_index=True)
    started = time.perf_counter()
    events = select_events(data.frames["test"], seen, catalog, windows, args.events, args.seed)
    select_s = time.perf_counter() - started
    scorers = {
        "model": model_scorer(model, data, 4096, torch.device("cpu")),
        "popularity": popularity_scorer(PopularityBaseline().fit(data.frames["train"]), catalog),
        "recent_popularity": recent_popularity_scorer(all_positives(data), catalog),
        "newest": newest_scorer(windows),
        "oracle": oracle_scorer(data.oracle, catalog),
    }
    print(f"\n{len(events.times)} events, mean {mean_live_jobs(events, windows):,.0f} live jobs per event "
          f"({len(catalog):,} in the catalog); default ConvFM; torch threads {torch.get_num_threads()}; "
          f"selecting events {select_s:.2f}s\n")
    print("| method | seconds | pairs/s |\n|---|---:|---:|")
    pairs = len(events.times) * mean_live_jobs(events, windows)
    for name, scorer in scorers.items():
        started = time.perf_counter()
        evaluate_live(events, windows, {name: scorer})
        seconds = time.perf_counter() - started
        print(f"| {name} | {seconds:.3f} | {pairs / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
