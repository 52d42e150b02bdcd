"""Driver peak RSS and wall time of data preparation, in memory against distributed (Ray Data), as data grows.

Each (size, path) runs in a fresh process, so its peak RSS (``ru_maxrss``) is that path's alone; beside it the
peak private memory (USS, sampled every 0.2 s), which leaves out shared pages such as Ray's object store:
  memory       ``prepare_data``: the driver reads the table, fits and encodes every row
  distributed  ``prepare_distributed`` + the encoded training rows streamed once by a Ray task (as a training
               worker reads them); the driver only merges counts. Ray's start-up is left out of the time, Ray's
               worker processes out of the memory (they are the cluster's memory, not the driver's).
The table is synthetic interactions with vocabularies that do not grow with the rows (20k job ids, 60
skills...), so what grows is the data and nothing the model keeps.

``--kind market``: a synthetic job market (``convfm data synth``: 50k users, 20k jobs, the interactions as
Parquet part files) prepared by ``prepare_data`` or ``train.prepare_market``. The users and jobs stay fixed as
the log grows, so the catalogs and each user's latest history (what the model keeps) stay the same size.

    python benchmarks/prepare_memory.py --sizes 1000000 5000000 --out /tmp/prep-bench
    python benchmarks/prepare_memory.py --kind market --sizes 1000000 5000000 --out /tmp/prep-bench
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

FIELDS = {"categorical": ["job_id", "region", "device"], "multi_valued": ["skills"], "numeric": ["salary", "hour"]}
PART_ROWS = 1_000_000


def synth_part(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    skills = np.array([";".join(rng.choice([f"skill{i}" for i in range(60)], size=k, replace=False))
                       for k in rng.integers(1, 5, size=500)], dtype=object)
    job = rng.zipf(1.3, rows) % 20_000
    logit = -1.0 + 0.3 * (job % 7 == 0) + 0.002 * (rng.normal(50_000, 15_000, rows) - 50_000) / 1000
    return pa.table({
        "job_id": pa.array([f"j{j}" for j in job]),
        "region": pa.array(np.array(["north", "south", "east", "west", "central", "remote", "eu", "apac"],
                                    dtype=object)[rng.integers(0, 8, rows)]),
        "device": pa.array(np.array(["desktop", "mobile", "tablet"], dtype=object)[rng.integers(0, 3, rows)]),
        "skills": pa.array(skills[rng.integers(0, len(skills), rows)]),
        "salary": pa.array(rng.normal(50_000, 15_000, rows)),
        "hour": pa.array(rng.integers(0, 24, rows)),
        "clicked": pa.array((rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)),
    })


def write_table(root: Path, rows: int) -> Path:
    """train.parquet (row groups of PART_ROWS, written part by part), small valid/test files."""
    if (root / "test.parquet").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    writer = None
    for seed, start in enumerate(range(0, rows, PART_ROWS)):
        part = synth_part(min(PART_ROWS, rows - start), seed)
        writer = writer or pq.ParquetWriter(root / "train.parquet", part.schema)
        writer.write_table(part)
    writer.close()
    pq.write_table(synth_part(50_000, 1001), root / "valid.parquet")
    pq.write_table(synth_part(50_000, 1002), root / "test.parquet")
    return root


MARKET_USERS, MARKET_JOBS, MARKET_PARTS = 50_000, 20_000, 8


def write_market_parts(root: Path, interactions: int) -> Path:
    """A synthetic market whose interactions are Parquet part files, written once by `convfm data synth` in its
    own process (generating 20M interactions takes ~10 GB, which a parent holding it would keep from the
    measured children)."""
    if (root / "interactions").is_dir():
        return root
    subprocess.run([sys.executable, "-m", "convfm.cli.main", "data", "synth", "--out", str(root), "--users",
                    str(MARKET_USERS), "--jobs", str(MARKET_JOBS), "--interactions", str(interactions), "--seed", "0",
                    "--format", "parquet", "--parts", str(MARKET_PARTS)], check=True, stdout=subprocess.DEVNULL)
    return root


def measure(path: str, root: Path, kind: str) -> dict:
    """Run in the child process: prepare, then report wall seconds and this process's peak RSS."""
    from convfm.config import DataConfig

    config = (DataConfig(kind="table", path=str(root), label="clicked", **FIELDS) if kind == "table" else
              DataConfig(path=str(root)))
    if path == "memory":
        from convfm.data.prepare import prepare_data

        started = time.perf_counter()
        rows = len(prepare_data(config).sets["train"])
    else:
        import ray

        from train.prepare_distributed import BATCH_ROWS, prepare_distributed
        from train.prepare_market import prepare_market_distributed

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False

        @ray.remote(num_cpus=0.5)
        def stream(dataset: ray.data.Dataset) -> int:  # a training worker's read of the encoded rows
            return sum(len(b["label"]) for b in dataset.iter_batches(batch_size=BATCH_ROWS))

        started = time.perf_counter()
        data = (prepare_distributed if kind == "table" else prepare_market_distributed)(config)
        rows = ray.get(stream.remote(data.datasets["train"]))
    seconds = time.perf_counter() - started
    return {"path": path, "rows": rows, "seconds": round(seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_uss_mib": round(PEAK_USS[0] / 2**20)}


PEAK_USS = [0]


def _sample_uss() -> None:
    process = psutil.Process()
    while True:
        PEAK_USS[0] = max(PEAK_USS[0], process.memory_full_info().uss)
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--paths", nargs="+", default=["memory", "distributed"])
    parser.add_argument("--kind", choices=("table", "market"), default="table",
                        help="a labelled table (rows), or a job market (interactions)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/convfm-prepare-bench"))
    parser.add_argument("--child", nargs=3, metavar=("PATH", "ROOT", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threading.Thread(target=_sample_uss, daemon=True).start()
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.child[2])))
        return
    results = []
    print(f"{'rows' if args.kind == 'table' else 'interactions':>12} {'path':<12} {'data MiB':>9} {'wall s':>8} "
          f"{'train examples':>14} {'driver peak RSS MiB':>20} {'peak USS MiB':>13}", flush=True)
    for size in args.sizes:
        if args.kind == "table":
            root = write_table(args.out / f"rows-{size}", size)
            on_disk = (root / "train.parquet").stat().st_size / 2**20
        else:
            root = write_market_parts(args.out / f"market-{size}", size)
            on_disk = sum(p.stat().st_size for p in (root / "interactions").iterdir()) / 2**20
        for path in args.paths:
            child = subprocess.run([sys.executable, __file__, "--child", path, str(root), args.kind],
                                   capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if child.returncode:
                print(f"{size:>12,} {path:<12} failed: {child.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            result = json.loads(child.stdout.strip().splitlines()[-1])
            results.append({"size": size, **result})
            print(f"{size:>12,} {path:<12} {on_disk:>9.0f} {result['seconds']:>8.1f} {result['rows']:>14,} "
                  f"{result['peak_rss_mib']:>20,} {result['peak_uss_mib']:>13,}", flush=True)
    (args.out / f"results-{args.kind}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
