"""Training throughput (samples/s): a plain PyTorch loop vs Ray Train with 1 and 2 workers, and dense vs
sparse embedding gradients, for the default ConvFM on a synthetic market (100k users, 100k jobs, ~1M
interactions).

    python benchmarks/train_throughput.py                   # ~6 minutes on 2 idle cores, more under load
    python benchmarks/train_throughput.py --workdir DIR     # keep the generated market for the next run
    python benchmarks/train_throughput.py --smoke           # a tiny market, about a minute: checks that it runs

What one measurement is: a freshly initialised model (seed 0) trains a warm-up epoch, then ``--epochs``
timed epochs, over the same ``--steps`` x ``--batch-size`` examples drawn from the training split (the
embedding tables and side tables stay full size: 200k x 64 rows, 100k-row catalogs), in the same seeded
shuffle orders; its samples/s = the median over the timed epochs of examples / ``train_epoch`` seconds
(gathering batches, forward, backward and optimizer steps). For Ray Train that number is measured inside
the worker (the loop's per-epoch ``samples_per_s`` of rank 0, times the number of workers for the total):
Ray start-up, data shipping, validation and checkpoints are excluded. Each Ray worker gets cores / workers
CPUs, and Ray Train sets its torch threads to that (1 worker: 2 threads, like the plain loop; 2 workers:
1 each).

Made for a shared, noisy machine: each round runs every other configuration once, in a rotating order,
with a plain-loop measurement right before and after it; a configuration's ratio is the median over rounds
of its samples/s / the mean of those two plain-loop measurements. samples/s (median) is over all of a
configuration's measurements, "best" their maximum.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

for _key, _value in {  # quieter, faster local Ray (see RAY_NOTES); set before ray is imported
    "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # what `convfm train` uses
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from convfm.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from convfm.evaluation.metrics import PopularityBaseline  # noqa: E402
from convfm.model.network import ConvFM  # noqa: E402
from convfm.model.optim import CombinedOptimizer, build_optimizer  # noqa: E402
from convfm.data.prepare import PreparedData, prepare_data  # noqa: E402
from convfm.data.synth import GENERATOR_VERSION, generate_market, write_market  # noqa: E402
from convfm.training.in_process import epoch_seed  # noqa: E402
from convfm.training.epoch import train_epoch  # noqa: E402

PLAIN = "plain loop, dense, Adam"
UNFUSED = "plain loop, dense, Adam without the fused kernel (torch's CPU default)"
SPARSE = "plain loop, sparse, SparseAdam"
RAY_TARGET, SPARSE_TARGET = 0.9, 3.0
STARTED = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every configuration shares."""

    data: PreparedData
    model: ModelConfig
    train: TrainConfig
    cpus: int
    epochs: int  # timed epochs per measurement, after one warm-up epoch
    runs_dir: Path


def market_dir(workdir: Path, users: int, jobs: int, interactions: int, seed: int) -> Path:
    """The synthetic market, generated and written once per size and generator version into ``workdir`` (reused
    afterwards; a new generator writes a new directory instead of reusing another world's files)."""
    path = workdir / f"market-v{GENERATOR_VERSION}-u{users}-j{jobs}-i{interactions}-s{seed}"
    if not (path / "meta.json").is_file():
        started = time.perf_counter()
        partial = Path(tempfile.mkdtemp(prefix="market-", dir=workdir))
        write_market(generate_market(users, jobs, interactions, seed=seed), partial, fmt="parquet")
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
        log(f"generated {path} in {time.perf_counter() - started:.1f}s")
    return path


def bench_data(full: PreparedData, examples: int, valid_rows: int, seed: int) -> PreparedData:
    """``examples`` random training examples over the full side tables; a small validation split so that
    the Ray loop's per-epoch validation (outside the timed part) stays short."""
    rng = np.random.default_rng(seed)
    train = full.sets["train"]
    train = train.subset(np.sort(rng.permutation(len(train))[: min(examples, len(train))]))
    valid_rows = min(valid_rows, len(full.sets["valid"]))
    frames = {"train": full.frames["train"], "valid": full.frames["valid"].iloc[:valid_rows]}
    return PreparedData(full.config, full.extractor, {"train": train, "valid": full.sets["valid"].subset(
        np.arange(valid_rows))}, frames, catalog=full.catalog, truth=full.truth,
        popularity=PopularityBaseline().fit(full.frames["train"]))


# ------------------------------------------------------------------------------------- configurations
def unfused_adam(model: torch.nn.Module, learning_rate: float) -> CombinedOptimizer:
    """torch's default Adam on CPU (the for-loop kernel): what build_optimizer used before fusing."""
    return CombinedOptimizer([torch.optim.Adam(model.parameters(), lr=learning_rate, fused=False, foreach=False)])


def plain(setup: Setup, sparse: bool = False, fused: bool = True) -> tuple[float, int]:
    """(median samples/s of the timed epochs, torch threads) for train_epoch in this process, no Ray."""
    torch.set_num_threads(setup.cpus)
    torch.manual_seed(setup.train.seed)
    model = ConvFM(dataclasses.replace(setup.model, sparse_embeddings=sparse), setup.data.extractor.feature_map)
    lr = setup.train.learning_rate
    optimizer = build_optimizer(model, lr) if fused else unfused_adam(model, lr)
    timed = []
    for epoch in range(1 + setup.epochs):  # warm-up, timed...
        stats = train_epoch(model, setup.data.sets["train"], optimizer, setup.train.batch_size, torch.device("cpu"),
                            epoch_seed=epoch_seed(setup.train.seed, epoch), use_amp=setup.train.use_amp)
        timed.append(stats["samples"] / stats["train_seconds"])
    return statistics.median(timed[1:]), torch.get_num_threads()


def ray_train(setup: Setup, workers: int, sparse: bool = False) -> tuple[float, int]:
    """(median over the timed epochs of rank 0's samples/s x workers, rank 0's torch threads)."""
    from train.driver import run_training

    out = Path(tempfile.mkdtemp(prefix=f"ray{workers}-", dir=setup.runs_dir)) / "run"
    train = dataclasses.replace(setup.train, num_workers=workers, num_epochs=1 + setup.epochs, keep_checkpoints=1,
                                cpus_per_worker=max(1, setup.cpus // workers))
    model = dataclasses.replace(setup.model, sparse_embeddings=sparse)
    try:
        result = run_training(setup.data.config, model, train, out, prepared=setup.data)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)  # checkpoints: ~250 MB each at full size
    timed = result.history[1:]
    total = statistics.median(float(r["samples_per_s"]) * int(r["world_size"]) for r in timed)
    return total, int(timed[-1]["torch_threads"])


def configurations(cpus: int, ray_sparse: bool) -> dict[str, Callable[[Setup], tuple[float, int]]]:
    configs: dict[str, Callable[[Setup], tuple[float, int]]] = {
        PLAIN: plain,
        UNFUSED: lambda s: plain(s, fused=False),
        SPARSE: lambda s: plain(s, sparse=True),
    }
    for sparse in (False, True) if ray_sparse else (False,):
        kind = "sparse" if sparse else "dense"
        configs[f"Ray Train, 1 worker x {cpus} CPUs, {kind}"] = lambda s, sparse=sparse: ray_train(s, 1, sparse)
        if cpus >= 2:  # two 1-CPU workers need two CPUs
            configs[f"Ray Train, 2 workers x {cpus // 2} CPU, {kind} (total)"] = \
                lambda s, sparse=sparse: ray_train(s, 2, sparse)
    return configs


# ---------------------------------------------------------------------------------------------- run
@dataclasses.dataclass
class Results:
    samples_per_s: dict[str, list[float]]  # every measurement of each configuration
    ratios: dict[str, list[float]]  # per round: samples/s / mean of the plain-loop runs around it
    threads: dict[str, int]

    def ratio(self, name: str) -> float:
        return statistics.median(self.ratios[name]) if name in self.ratios else 1.0


def measure(setup: Setup, configs: dict[str, Callable[[Setup], tuple[float, int]]], rounds: int) -> Results:
    """Each round: plain, X1, plain, X2, plain, ... over the other configurations in a rotating order."""
    others = [name for name in configs if name != PLAIN]
    results = Results({name: [] for name in configs}, {name: [] for name in others}, {})

    def run(name: str, r: int) -> float:
        value, results.threads[name] = configs[name](setup)
        results.samples_per_s[name].append(value)
        log(f"round {r + 1}/{rounds}  {name}: {value:,.0f} samples/s ({results.threads[name]} torch thread(s))")
        return value

    for r in range(rounds):
        before = run(PLAIN, r)
        for name in others[r % len(others):] + others[: r % len(others)]:
            value = run(name, r)
            after = run(PLAIN, r)
            results.ratios[name].append(value / ((before + after) / 2))
            before = after
    return results


def report(results: Results) -> str:
    lines = ["| configuration | samples/s (median) | ratio vs plain loop | best | torch threads | measurements |",
             "|---|---:|---:|---:|---:|---|"]
    for name, values in results.samples_per_s.items():
        each = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {name} | {statistics.median(values):,.0f} | {results.ratio(name):.2f}x "
                     f"| {max(values):,.0f} | {results.threads[name]} | {each} |")
    ray_one = next(name for name in results.samples_per_s if name.startswith("Ray Train, 1 worker"))
    unfused = statistics.median(a / b for a, b in zip(results.ratios[SPARSE], results.ratios[UNFUSED]))
    checks = [(f"Ray Train 1 worker >= {RAY_TARGET:g}x the plain loop", results.ratio(ray_one), RAY_TARGET),
              (f"sparse >= {SPARSE_TARGET:g}x dense torch.optim.Adam (its CPU default, unfused)", unfused, SPARSE_TARGET),
              (f"sparse >= {SPARSE_TARGET:g}x dense fused Adam (this project's dense default)", results.ratio(SPARSE),
               SPARSE_TARGET)]
    lines.append("")
    for what, value, target in checks:
        lines.append(f"target: {what}: {value:.2f}x -> {'met' if value >= target else 'MISSED'}")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:4.0f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the market is cached (default: a temp dir, kept)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch (split across Ray workers)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every configuration")
    parser.add_argument("--valid-rows", type=int, default=2000, help="validation examples of the Ray runs")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="cores for Ray and torch threads")
    parser.add_argument("--ray-sparse", action="store_true", help="also run Ray Train with sparse gradients")
    parser.add_argument("--smoke", "--smoke-test", action="store_true", help="tiny market and steps, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.users, args.jobs, args.interactions = 300, 200, 6_000
        args.batch_size, args.steps, args.epochs, args.rounds, args.valid_rows = 64, 4, 1, 1, 400
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.gettempdir()) / "convfm-train-throughput"
    workdir.mkdir(parents=True, exist_ok=True)
    path = market_dir(workdir, args.users, args.jobs, args.interactions, seed=0)
    prepare_started = time.perf_counter()
    full = prepare_data(DataConfig(path=str(path)))
    log(f"prepared {full.summary()} in {time.perf_counter() - prepare_started:.1f}s")
    data = bench_data(full, args.steps * args.batch_size, args.valid_rows, seed=0)
    train = TrainConfig(batch_size=args.batch_size, eval_negatives=9, use_amp=False)

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=True, log_to_driver=False, configure_logging=False)
    runs_dir = Path(tempfile.mkdtemp(prefix="runs-", dir=workdir))
    load_before = os.getloadavg()[0]
    try:
        setup = Setup(data, ModelConfig(), train, args.cpus, args.epochs, runs_dir)
        results = measure(setup, configurations(args.cpus, args.ray_sparse), args.rounds)
    finally:
        ray.shutdown()
        shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"ConvFM default model (embedding 64, conv 64, MLP 128-64-32), batch {args.batch_size}, "
          f"{len(data.sets['train']):,} examples per timed epoch ({args.steps} steps); market {args.users:,} users, "
          f"{args.jobs:,} jobs, {sum(full.summary().values()):,} interactions; {args.cpus} CPU(s), torch "
          f"{torch.__version__}; {args.rounds} interleaved round(s) of warm-up + {args.epochs} timed epoch(s) each; "
          f"Ray: samples/s measured in the worker, start-up excluded; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f}\n")
    print(report(results))
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
