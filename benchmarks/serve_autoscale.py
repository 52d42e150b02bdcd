"""Autoscaling on the machine it runs on: the convfm Serve app with ``replicas: auto``, replicas sized to the node
(ServeConfig.replica_cpus), under a load spike and after it.

    python benchmarks/serve_autoscale.py                  # ~2-3 minutes on 2 cores
    python benchmarks/serve_autoscale.py --model models/NAME
    python benchmarks/serve_autoscale.py --smoke-test     # short phases: checks that it runs
    python benchmarks/serve_autoscale.py --proxy haproxy  # HAProxy in front (docs/SERVING.md, "Proxy")

Phases: ``--idle-s`` seconds idle, ``--load-s`` seconds of POST /recommend at ``--concurrency``, then
``--cool-s`` seconds idle. Every second the table records the Ranker's replicas by state (``serve.status()``)
and the requests answered in that second; at the end ``serve.shutdown()`` is timed. The client shares the
cores with the service, so read the replica counts and the shutdown time, not the absolute req/s.
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
from serve_load import build_model, free_port, wait_healthy  # noqa: E402  (a sibling benchmark script)


def replica_states() -> dict[str, int]:
    """The Ranker's replicas by state (RUNNING, STARTING, STOPPING...)."""
    from ray import serve

    application = serve.status().applications.get("convfm")
    deployment = None if application is None else application.deployments.get("Ranker")
    return {} if deployment is None else {str(k): int(v) for k, v in deployment.replica_states.items()}


async def timeline(url: str, bodies: list[dict], concurrency: int, idle_s: float, load_s: float,
                   cool_s: float) -> list[dict]:
    """One row per second: phase, replicas by state, requests answered and errors in that second."""
    import httpx

    answered, errors, stop = [0], [0], asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker(offset: int) -> None:
            n = offset
            while not stop.is_set():
                try:
                    ok = (await client.post("/recommend", json=bodies[n % len(bodies)])).status_code == 200
                except httpx.HTTPError:
                    ok = False
                answered[0] += ok
                errors[0] += not ok
                n += concurrency

        rows, workers, started = [], [], time.monotonic()
        for phase, seconds in (("idle", idle_s), ("load", load_s), ("cool", cool_s)):
            if phase == "load":
                workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
            elif workers:
                stop.set()
                await asyncio.gather(*workers)
                workers = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                before = (answered[0], errors[0])
                await asyncio.sleep(1.0)
                states = await asyncio.to_thread(replica_states)
                rows.append({"t": time.monotonic() - started, "phase": phase, "states": states,
                             "answered": answered[0] - before[0], "errors": errors[0] - before[1]})
    return rows


def spans(rows: list[dict]) -> list[list[dict]]:
    """Consecutive seconds with the same phase and replica states, as one table row each."""
    out: list[list[dict]] = []
    for row in rows:
        if out and (out[-1][0]["phase"], out[-1][0]["states"]) == (row["phase"], row["states"]):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry entry or model dir (default: train a fresh one)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for the local Ray")
    parser.add_argument("--max-replicas", type=int, default=2, help="autoscaling bound (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients during the load (default 32)")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--load-s", type=float, default=40.0)
    parser.add_argument("--cool-s", type=float, default=50.0, help="idle after the load (downscale delay is 30 s)")
    parser.add_argument("--proxy", choices=("serve", "haproxy"), default="serve",
                        help="the HTTP proxy in front (serve.proxy; default Serve's own)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny model, short phases")
    args = parser.parse_args()
    if args.smoke_test:
        args.concurrency, args.idle_s, args.load_s, args.cool_s = 8, 2.0, 6.0, 3.0
    from convfm.cli.serve import proxy_environment

    with proxy_environment(args.proxy):  # read by the Ray started below, and checked by its ingress
        return run(args)


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve.app import APP_NAME, build_app
    from serve.config import ServeConfig

    workdir = Path(tempfile.mkdtemp(prefix="convfm-autoscale-"))
    model = str(Path(args.model).absolute()) if args.model else str(build_model(
        workdir, *((300, 200, 5_000) if args.smoke_test else (2_000, 1_000, 30_000))))
    port = free_port()
    config = ServeConfig(model=model, port=port, replicas="auto", min_replicas=1, max_replicas=args.max_replicas,
                         proxy=args.proxy)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        from serve.model_slot import ModelSlot

        slot = ModelSlot(model)
        slot.load()
        bodies = [{"user_id": u, "k": 10} for u in list(slot.require().extractor.user_rows)[:200]]
        rows = asyncio.run(timeline(url, bodies, args.concurrency, args.idle_s, args.load_s, args.cool_s))
    finally:
        stopping = time.perf_counter()
        serve.shutdown()
        shutdown_s = time.perf_counter() - stopping
        ray.shutdown()

    cpus = config.replica_cpus(args.cpus)
    print(f"\n### Autoscaling: replicas auto (1..{args.max_replicas}, {cpus} CPU each on a {args.cpus}-CPU node), "
          f"concurrency {args.concurrency} for {args.load_s:.0f}s, behind {args.proxy}'s proxy\n")
    print("| t (s) | phase | running | starting | other states | answered/s | errors |")
    print("|---|---|---:|---:|---|---:|---:|")
    for span in spans(rows):
        first, last = span[0], span[-1]
        states = dict(first["states"])
        running, starting = states.pop("RUNNING", 0), states.pop("STARTING", 0)
        other = ", ".join(f"{k} {v}" for k, v in states.items() if v) or ""
        rate = sum(r["answered"] for r in span) / len(span)
        print(f"| {first['t']:.0f}-{last['t']:.0f} | {first['phase']} | {running} | {starting} | {other} "
              f"| {rate:.0f} | {sum(r['errors'] for r in span)} |")
    peak = max((r["states"].get("RUNNING", 0) for r in rows), default=0)
    final = rows[-1]["states"].get("RUNNING", 0) if rows else 0
    errors = sum(r["errors"] for r in rows)
    print(f"\npeak running replicas {peak}, at the end {final}; errors {errors}; serve.shutdown() took "
          f"{shutdown_s:.1f}s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
