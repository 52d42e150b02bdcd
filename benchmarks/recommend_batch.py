"""Batch recommendations (``convfm recommend-batch``): users per second per CPU, in one run.

1. ``BatchRanker.recommend`` in this process, one torch thread: the ranking cost alone, per catalog size (the
   fitted catalog tiled, as serve_load.py does);
2. the whole command on a local Ray (Ray Data read, ``--workers`` ranking actors, Parquet write), start-up included.

    python benchmarks/recommend_batch.py                  # ~3-4 minutes on 2 cores
    python benchmarks/recommend_batch.py --model models/NAME --users 20000
    python benchmarks/recommend_batch.py --smoke-test     # tiny sizes: checks that it runs
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_model  # noqa: E402  (a sibling benchmark script)


def in_process(model: str, users: list[str], jobs: int, k: int) -> dict[str, float]:
    """Users/s of BatchRanker over ``users`` with the catalog tiled to ``jobs`` rows, one thread."""
    import torch

    from convfm.model.batch_ranking import BatchRanker
    from convfm.model.ranking import CatalogRanker
    from convfm.store.registry import resolve

    torch.set_num_threads(1)
    batch = BatchRanker.load(resolve(model))
    at = int(batch.ranker.recency.posted.max()) if batch.ranker.recency is not None else None
    batch = BatchRanker.load(resolve(model), at=at)
    extractor = batch.extractor
    rows = np.concatenate([[0], np.random.default_rng(0).integers(1, len(extractor.job_catalog), size=jobs)])
    tiled = batch.ranker.job_table(rows)  # every job-side field, recency at `at` included
    batch.ranker = CatalogRanker(batch.ranker.model, extractor, jobs=tiled, time=at)
    batch.live = np.ones(len(rows), dtype=bool)
    batch.live[0] = False
    batch.seen, batch.job_ids = {}, batch.job_ids[rows]  # seen rows index the fitted catalog, not the tiled one
    started = time.perf_counter()
    out = batch.recommend(users, k)
    seconds = time.perf_counter() - started
    return {"jobs": jobs, "users": len(users), "rows": len(out), "seconds": seconds, "users_s": len(users) / seconds}


def with_ray(model: str, users: list[str], k: int, workers: int, cpus: int, workdir: Path) -> dict[str, float]:
    import ray

    from batch.recommend import recommend_batch
    from convfm.model.batch_ranking import BatchRanker
    from convfm.store.registry import resolve

    posted = BatchRanker.load(resolve(model)).ranker.recency
    at = int(posted.posted.max()) if posted is not None else None
    pd.DataFrame({"user_id": users}).to_parquet(workdir / "users.parquet")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = recommend_batch(model, str(workdir / "users.parquet"), str(workdir / "recs"), k, at=at,
                                  workers=workers)
    finally:
        ray.shutdown()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry entry or model dir (default: train a fresh one)")
    parser.add_argument("--users", type=int, default=2000, help="users to rank (default 2000; ids cycle)")
    parser.add_argument("-k", type=int, default=50)
    parser.add_argument("--catalogs", default="1000,10000,100000", help="catalog sizes for the in-process rows")
    parser.add_argument("--workers", type=int, default=1, help="ranking actors of the Ray run (default 1)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for the local Ray")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.smoke_test:
        args.users, args.catalogs = 100, "500"
    workdir = Path(tempfile.mkdtemp(prefix="convfm-batch-"))
    model = str(Path(args.model).absolute()) if args.model else str(build_model(
        workdir, *((300, 200, 5_000) if args.smoke_test else (2_000, 1_000, 30_000))))
    from convfm.model.batch_ranking import BatchRanker
    from convfm.store.registry import resolve

    known = BatchRanker.load(resolve(model)).extractor.user_ids[1:]
    users = [known[i % len(known)] for i in range(args.users)]
    rows = [in_process(model, users, int(n), args.k) for n in args.catalogs.split(",")]
    ray_run = with_ray(model, users, args.k, args.workers, args.cpus, workdir)

    print(f"\n### Batch top-{args.k} for {len(users):,} users\n")
    print("| path | catalog jobs | seconds | users/s per CPU |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| BatchRanker, 1 thread | {r['jobs']:,} | {r['seconds']:.2f} | {r['users_s']:,.0f} |")
    print(f"| recommend-batch on Ray Data, {ray_run['workers']} worker(s), start-up included | fitted catalog | "
          f"{ray_run['seconds']:.2f} | {ray_run['users_per_s_per_worker']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
