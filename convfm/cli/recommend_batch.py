"""`convfm recommend-batch`: every user's top-k jobs, offline, on Ray Data (the daily "jobs for you" email)."""
from __future__ import annotations

import argparse

from convfm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="registry entry (models/NAME, its `latest`), a version or a model dir; local or a URI")
    parser.add_argument("--version", metavar="vNNNN", help="registry version (default: the entry's latest)")
    parser.add_argument("--users", required=True, metavar="PATH",
                        help="Parquet file or folder (or a .csv file) with a user_id column (strings or integers)")
    parser.add_argument("-k", type=int, default=50, help="jobs per user, 1..1000 (default 50)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new output folder (local or a URI)")
    parser.add_argument("--at", metavar="TIME", help="rank as of this UTC date/time: jobs live then, history "
                        "before it (default: now)")
    parser.add_argument("--include-seen", action="store_true", help="keep jobs the user already interacted with")
    parser.add_argument("--workers", type=int, metavar="N", help="ranking actors, 1 CPU each (default: CPUs - 1)")
    parser.add_argument("--batch-size", type=int, default=512, help="users per ranking call (default 512)")
    parser.add_argument("--retrieval-candidates", type=int, default=0, metavar="K",
                        help="rank each user's K best candidates of a retrieval index exactly instead of the whole "
                        "catalog (catalogs too large to scan per user; as serve's retrieval_candidates); 0: full scan "
                        "(default)")
    parser.add_argument("--address", metavar="ADDR", help="join a Ray cluster: 'auto', HOST:PORT or ray://HOST:10001 "
                        "(default: $RAY_ADDRESS inside `ray job submit`, else a new local Ray)")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.k <= 1000:
        raise ConfigError(f"-k: must be in [1, 1000], got {args.k}")
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise ConfigError(f"--workers: must be in [1, 1024], got {args.workers}")
    if not 1 <= args.batch_size <= 65536:
        raise ConfigError(f"--batch-size: must be in [1, 65536], got {args.batch_size}")
    from convfm.model.retrieval import MAX_CANDIDATES

    if not 0 <= args.retrieval_candidates <= MAX_CANDIDATES:
        raise ConfigError(f"--retrieval-candidates: must be in [0, {MAX_CANDIDATES}], got {args.retrieval_candidates}")
    from batch.recommend import parse_time, recommend_batch

    print(f"recommend-batch: top {args.k} jobs for the users of {args.users}", flush=True)
    summary = recommend_batch(args.model, args.users, args.out, args.k, exclude_seen=not args.include_seen,
                              at=parse_time(args.at), workers=args.workers, batch_size=args.batch_size,
                              version=args.version, address=args.address,
                              retrieval_candidates=args.retrieval_candidates)
    print(f"wrote {summary['rows']:,} rows for {summary['users_with_rows']:,} of {summary['users']:,} users to "
          f"{args.out} (model {summary['model_version']}) in {summary['seconds']:.1f}s with {summary['workers']} "
          f"worker(s), Ray Data and actor start-up included: {summary['users_per_s_per_worker']:,.0f} users/s per "
          "worker")
    return 0
