"""`convfm data synth`: write a synthetic job market with known ground truth."""
from __future__ import annotations

import argparse
import time

from convfm.data.synth import generate_market, write_market


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="write jobs/users/interactions/truth files of a synthetic job market")
    synth.add_argument("--out", required=True, metavar="DIR", help="output directory")
    synth.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    synth.add_argument("--jobs", type=int, default=1000, help="number of jobs (default 1000)")
    synth.add_argument("--interactions", type=int, default=50_000, help="number of interactions (default 50000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    synth.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default csv)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    market = generate_market(users=args.users, jobs=args.jobs, interactions=args.interactions, seed=args.seed)
    write_market(market, args.out, fmt=args.format)
    print(f"wrote {args.users} users, {args.jobs} jobs, {args.interactions} interactions to {args.out} "
          f"in {time.perf_counter() - start:.1f}s")
    return 0
