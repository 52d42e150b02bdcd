"""Soak check of the convfm Serve app: ``--rounds`` runs of ``--duration`` seconds each at a fixed concurrency on
loopback, reporting per run the errors and the RSS of every Serve replica process (Ranker, Api) before the first
run and after each.

    python benchmarks/serve_soak.py --duration 30 --rounds 3 --concurrency 8
    python benchmarks/serve_soak.py --model models/NAME --duration 300 --rounds 6

It exits 1 on any error or when a replica's RSS grew by more than ``--max-rss-growth-mb`` from the end of the
first run (warm-up allocations) to the end of the last.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_model, free_port, load, wait_healthy  # noqa: E402  (a sibling benchmark script)


def replica_processes() -> dict[str, "psutil.Process"]:
    """Serve replica processes on this machine by their Ray process title (works without the dashboard)."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:convfm:"):
            name = title.split()[0].removeprefix("ray::ServeReplica:convfm:").split(".")[0]
            found[f"{name} (pid {process.info['pid']})"] = process
    return found


def rss_mb(processes: dict) -> dict[str, float]:
    import psutil

    out = {}
    for name, process in processes.items():
        try:
            out[name] = process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            out[name] = float("nan")
    return out


def soak(model: str, args: argparse.Namespace, bodies: list[dict]) -> int:
    """``--duration``: rounds of fixed-duration load on the convfm app; errors and replica RSS per round."""
    import ray
    from ray import serve

    from serve.app import build_app
    from serve.config import ServeConfig

    from convfm.cli.serve import free_ports
    from serve.proxy import ray_environment

    port = free_port()
    os.environ.update(ray_environment("serve", free_ports))  # Serve's own proxy, whatever the shell exported
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(model=model, port=port, replicas=args.replicas, num_cpus=min(1.0, args.cpus / (
            args.replicas + 1)), max_batch_size=16)
        serve.run(build_app(config), name="convfm", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        asyncio.run(load(base, bodies, 50, 4))  # warm-up: every replica scores a few batches
        processes = replica_processes()
        rows = [("before", None, rss_mb(processes))]
        for n in range(1, args.rounds + 1):
            result = asyncio.run(load(base, bodies, 10**9, args.concurrency, duration=args.duration, warmup=False))
            rows.append((f"run {n}", result, rss_mb(processes)))
    finally:
        serve.shutdown()
        ray.shutdown()

    names = list(processes)
    print(f"\n### Soak: POST /recommend for {args.duration:.0f}s x {args.rounds} at concurrency {args.concurrency}, "
          f"{args.replicas} Ranker replica(s), loopback\n")
    print("| after | requests | req/s | p50 ms | p99 ms | errors | " + " | ".join(f"RSS MB {n}" for n in names) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(names))
    for label, r, rss in rows:
        numbers = "| | | | | " if r is None else (f"| {r['requests']} | {r['req_s']:.0f} | {r['p50']:.1f} | "
                                                   f"{r['p99']:.1f} | {r['errors']} ")
        print(f"| {label} {numbers}| " + " | ".join(f"{rss[n]:.0f}" for n in names) + " |")
    errors = sum(r["errors"] for _, r, _ in rows if r is not None)
    growth = {n: rows[-1][2][n] - rows[1][2][n] for n in names}
    worst = max(growth.values(), default=0.0)
    print(f"\nerrors: {errors}; RSS growth from the end of run 1 to the end of run {args.rounds}: "
          + ", ".join(f"{n} {g:+.1f} MB" for n, g in growth.items()))
    if not names:
        print("no Serve replica processes found (is this the machine running Ray?)")
    return 1 if errors or worst > args.max_rss_growth_mb or not names else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry entry or model dir (default: train a fresh one)")
    parser.add_argument("--duration", type=float, default=30.0, metavar="S", help="seconds per run (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--replicas", type=int, default=2, help="Ranker replicas (default 2)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for the local Ray")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0,
                        help="fail when a replica grows more than this from run 1 to the last (default 64)")
    args = parser.parse_args()
    if not 0 < args.duration <= 3600 or not 1 <= args.rounds <= 100:
        parser.error("--duration must be in (0, 3600] seconds and --rounds in [1, 100]")
    started = time.perf_counter()
    model = str(Path(args.model).absolute()) if args.model else str(
        build_model(Path(tempfile.mkdtemp(prefix="convfm-soak-")), 2_000, 1_000, 30_000))
    print(f"model {model} ready after {time.perf_counter() - started:.0f}s", file=sys.stderr)
    from serve.model_slot import ModelSlot

    slot = ModelSlot(model)
    slot.load()
    bodies = [{"user_id": u, "k": 10} for u in list(slot.require().extractor.user_rows)[:200]]
    del slot
    return soak(model, args, bodies)


if __name__ == "__main__":
    sys.exit(main())
