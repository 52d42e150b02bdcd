"""`convfm data synth`: write a synthetic job market with known ground truth; `convfm data stats`: how a market
(synthetic or a real log) unfolds in time."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from convfm.cli.common import data_config
from convfm.config import DataConfig
from convfm.errors import ConfigError
from convfm.data.loading import load_job_market
from convfm.data.market_stats import format_stats, market_stats
from convfm.data.synth import generate_market, write_market

# The default market looks like a real job-view log: 5 impressions per user on average (median 4, a long tail),
# about 2.5 per job, most positives late in the timeline on jobs posted late (see the README).
USERS, JOBS, INTERACTIONS = 10_000, 20_000, 50_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="write jobs/users/interactions/truth/oracle files of a synthetic job market "
                           "and print its statistics")
    synth.add_argument("--out", required=True, metavar="DIR", help="output directory")
    synth.add_argument("--users", type=int, default=USERS, help=f"number of users (default {USERS})")
    synth.add_argument("--jobs", type=int, default=JOBS, help=f"number of jobs (default {JOBS})")
    synth.add_argument("--interactions", type=int, default=INTERACTIONS,
                       help=f"number of interactions (default {INTERACTIONS})")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    synth.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default csv)")
    synth.add_argument("--parts", type=int, default=None, metavar="N",
                       help="write the interactions as N part files in a folder interactions/ (the layout "
                            "`convfm train --prepare distributed` reads); default one file")
    stats = sub.add_parser("stats", help="print how a market directory (jobs, interactions) unfolds in time")
    stats.add_argument("--data", metavar="DIR", help="directory with jobs and interactions files (overrides the "
                       "config's data.path)")
    stats.add_argument("--config", metavar="YAML", help="a config whose data section reads the files (column "
                       "mapping, file names, events, job lifetime), as training does")
    stats.add_argument("--positive-events", default=None, metavar="E1,E2",
                       help="comma-separated events that count as positives (default the config's, else apply,save)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "stats":
        return _stats(args)
    if args.parts is not None and not 1 <= args.parts <= 10_000:
        raise ConfigError(f"--parts: must be in [1, 10000], got {args.parts}")
    _check_new_market_dir(Path(args.out))
    start = time.perf_counter()
    market = generate_market(users=args.users, jobs=args.jobs, interactions=args.interactions, seed=args.seed)
    if args.parts is not None and args.parts > len(market.interactions):  # empty parts: refused by the reader
        raise ConfigError(f"--parts: {args.parts} parts of {len(market.interactions)} interactions would leave "
                          "some empty; give at most as many parts as interactions")
    write_market(market, args.out, fmt=args.format, parts=args.parts)
    print(f"wrote {args.users} users, {args.jobs} jobs, {len(market.interactions)} interactions to {args.out} "
          f"in {time.perf_counter() - start:.1f}s\n")
    print(format_stats(market.meta["stats"]))
    return 0


MARKET_FILES = ("jobs", "users", "interactions", "truth", "oracle", "meta")  # what write_market writes, by stem


def _check_new_market_dir(out: Path) -> None:
    """``--out`` holds no market already: one written over it was replaced without a word (models trained on it
    no longer matched their data), and in another format mixed with it (the old CSVs read, the new truth)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a directory")
    there = sorted(p.name for p in out.iterdir() if p.name.split(".")[0] in MARKET_FILES) if out.is_dir() else []
    if there:
        raise ConfigError(f"--out {out}: already holds a market ({', '.join(there[:4])}); choose another --out, or "
                          "remove those files to replace it")


def _stats(args: argparse.Namespace) -> int:
    if not args.data and not args.config:
        raise ConfigError("data stats: give --data DIR or --config YAML (its data section)")
    config = data_config(args, args.config)
    if args.positive_events is not None:
        positives = tuple(e.strip() for e in args.positive_events.split(",") if e.strip())
        negatives = tuple(e for e in config.negative_events if e not in positives)
        config = DataConfig.from_dict({**config.to_dict(), "positive_events": positives,
                                       "negative_events": negatives})
    market = load_job_market(config)
    print(format_stats(market_stats(market.jobs, market.interactions, config.positive_events,
                                    config.job_lifetime_days)))
    return 0
