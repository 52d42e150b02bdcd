"""Serving benchmark on loopback, in one run, with the targets of issue 15:

1. a bounded load (fixed request count; asyncio + httpx) on POST /recommend at concurrency 1 and at
   ``--concurrency`` (16) against (a) a no-op Ray Serve endpoint (Serve's own overhead), (b) a plain
   FastAPI/uvicorn process calling the same scorer (no Ray, no batching), (c) the convfm Serve app with one
   replica (one deployment: HTTP and batched scoring in one process, the default) and (d) the app with two
   (an ingress in front of 2 batched Ranker replicas), over the model's 10,000-job catalog; the Serve targets
   behind each proxy in turn (``--proxy``: Serve's own, then HAProxy; rows marked ``[haproxy]``);
2. ranking a 100k-job catalog for one user: the precomputed fast path vs the model's full forward;
3. one new user's request in process, scanning the jobs open at its time (the service's way) or all of them
   (``benchmarks/serve_inprocess.py``, as 2).

    python benchmarks/serve_load.py                       # ~5-7 minutes on 2 cores (4-5 with --model)
    python benchmarks/serve_load.py --model models/NAME   # an existing registry entry instead of a fresh model
    python benchmarks/serve_load.py --smoke-test          # seconds: tiny numbers, checks that it runs
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --explain   # what explanations cost (no Ray, ~2 min)

The soak check (errors and replica memory over long runs) is ``benchmarks/serve_soak.py``.
The client shares the machine with the servers, so absolute req/s mostly measure this box; compare rows.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: the no-op's annotation is resolved here (postponed annotations)
from serve_inprocess import catalog_timing, explain_timing, open_timing, print_explain_timing  # beside this script

from convfm.cli.serve import free_port, proxy_environment

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
NOOP, PLAIN = "Ray Serve no-op endpoint", "plain FastAPI/uvicorn + scorer"
NOOP_BODY = "Ray Serve no-op endpoint that reads its body"
CONVFM, CONVFM_TWO = "Ray Serve convfm, 1 replica (one deployment)", "Ray Serve convfm, ingress -> 2 Ranker replicas"
RETURNING = "Ray Serve convfm, 1 replica, returning users (scans kept)"


# ------------------------------------------------------------------------------------------ model
def build_model(workdir: Path, users: int, jobs: int, interactions: int) -> Path:
    """A default-size ConvFM trained one epoch on a synthetic market, published as workdir/models/bench."""
    from convfm.store.artifacts import save_model_dir
    from convfm.config import DataConfig, ModelConfig, TrainConfig
    from convfm.data.prepare import prepare_data
    from convfm.store.registry import publish
    from convfm.store.serving_data import serving_extra_json
    from convfm.data.synth import generate_market, write_market
    from convfm.training.in_process import fit_in_process

    write_market(generate_market(users=users, jobs=jobs, interactions=interactions, seed=0), workdir / "data")
    data = prepare_data(DataConfig(path=str(workdir / "data")))
    train = TrainConfig(num_epochs=1, batch_size=1024, eval_negatives=20, use_amp=False)
    model, history = fit_in_process(data, ModelConfig(), train)
    export = save_model_dir(workdir / "export", model, data.extractor, metrics=history[-1],
                            extra_json=serving_extra_json(data))
    publish(export, workdir / "models", "bench")
    return workdir / "models" / "bench"


# ------------------------------------------------------------------------------------------- load
async def load(url: str, bodies: list[dict], requests: int, concurrency: int,
               duration: float | None = None, warmup: bool = True, warm_body: dict | None = None) -> dict[str, float]:
    """``requests`` POSTs by ``concurrency`` workers (with ``duration``: as many as fit in that many seconds,
    at most ``requests``), after 50 uncounted ones of ``warm_body`` (default the first body) -> req/s, latency
    percentiles (ms), errors."""
    import httpx

    from serve.timing import parse

    latencies: list[float] = []
    spans: list[dict[str, float]] = []  # each answer's Server-Timing (ms) and what the client waited beyond it
    errors, issued = 0, 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal errors, issued
            while issued < requests and (deadline is None or time.perf_counter() < deadline):
                body = bodies[issued % len(bodies)]
                issued += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/recommend", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok
                if ok and "server-timing" in response.headers:
                    timed = parse(response.headers["server-timing"])
                    spans.append({**timed, "outside": latencies[-1] * 1000 - timed["total"]})

        for _ in range(min(50, requests) if warmup else 0):  # warm-up, not counted
            await client.post("/recommend", json=warm_body or bodies[0])
        started = time.perf_counter()
        deadline = None if duration is None else started + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    q = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    medians = {f"{name}_p50": float(np.median([s.get(name, 0.0) for s in spans]))
               for name in ("read", "score", "total", "outside")} if spans else {}
    return {"requests": len(latencies), "req_s": len(latencies) / elapsed, "p50": q[0], "p95": q[1], "p99": q[2],
            "errors": errors, **medians}


def batching(url: str) -> dict[str, float]:
    """The app's batching and kept-scan counters (``GET /model``: with one replica, every request's) and its torch
    threads."""
    import httpx

    info = httpx.get(f"{url}/model", timeout=30).json()
    cache = info["score_cache"]
    return {**info["batching"], "torch_threads": info["torch_threads"], "cache_hits": cache["hits"],
            "cache_misses": cache["misses"]}


def wait_healthy(url: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f}s")


def plain_server(model: str, port: int) -> None:
    """(b): the same HTTP app and scorer under plain uvicorn, one process, no Ray."""
    import uvicorn

    from serve.http import LocalBackend, build_http_app
    from serve.model_slot import ModelSlot

    slot = ModelSlot(model)
    report = slot.load()
    if not report["ok"]:
        raise SystemExit(report["error"])
    uvicorn.run(build_http_app(LocalBackend(slot)), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def serve_targets(model: str, port: int, cpus: int, proxy: str) -> None:
    """Start Ray Serve behind ``proxy`` (``serve.proxy``: Ray reads it from its environment as it starts) with
    (a) a no-op app under /noop and one that reads its body under /noop-body (as many requests in flight as
    convfm's ingress, 32; the plain no-op keeps Serve's default of 5, as when issue 15 was measured), (c) the
    convfm app under / and (d) under /two."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    from serve.app import build_app
    from serve.config import ServeConfig

    noop, noop_body = FastAPI(), FastAPI()

    @noop.post("/recommend")
    async def recommend() -> dict:
        return {"items": []}

    @noop_body.post("/recommend")
    async def recommend_reading_body(request: Request) -> dict:
        await request.body()  # as any endpoint of a JSON body must: behind Serve's proxy, a call back to it
        return {"items": []}

    @noop.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    noop_app = serve.deployment(serve.ingress(noop)(), name="NoOp", ray_actor_options={"num_cpus": 0.1},
                                logging_config={"enable_access_log": False})
    serve.run(noop_app.bind(), name="noop", route_prefix="/noop")
    body_app = serve.deployment(serve.ingress(noop_body)(), name="NoOpBody", ray_actor_options={"num_cpus": 0.1},
                                max_ongoing_requests=32, logging_config={"enable_access_log": False})
    serve.run(body_app.bind(), name="noop-body", route_prefix="/noop-body")
    # Both apps fit the CPUs beside the no-ops (a replica that does not fit never starts); Ray gives each replica
    # one torch thread for any fraction under 2 CPUs.
    share = (cpus - 0.2) / 2
    config = ServeConfig(model=model, port=port, num_cpus=share, max_batch_size=16, proxy=proxy)
    serve.run(build_app(config), name="convfm", route_prefix="/")
    two = ServeConfig(model=model, port=port, replicas=2, num_cpus=(share - 0.1) / 2, max_batch_size=16,
                      proxy=proxy)
    serve.run(build_app(two), name="convfm-two", route_prefix="/two")


def label(proxy: str) -> str:
    """A row name's mark of the proxy: none for Serve's own (the rows of every earlier run)."""
    return "" if proxy == "serve" else f" [{proxy}]"


def serve_rows(model: str, port: int, cpus: int, proxy: str, levels: list[tuple[int, int]],
               level_bodies: dict[int, list[dict]], warm: dict, returning: int,
               results: dict[tuple[str, int], dict[str, float]]) -> tuple[dict, dict]:
    """The Serve targets behind ``proxy``, back to back at each level, into ``results`` -> the one-replica app's
    batching counters per level, over its new users' load and over its returning users'."""
    batches: dict[int, dict[str, float]] = {}
    kept: dict[int, dict[str, float]] = {}
    base, row = f"http://127.0.0.1:{port}", lambda name: name + label(proxy)
    import ray
    from ray import serve

    with proxy_environment(proxy, port):  # Ray reads it as it starts; HAProxy's directory lasts until Ray stops
        try:
            serve_targets(model, port, cpus, proxy)
            wait_healthy(base)
            wait_healthy(f"{base}/two")
            for concurrency, requests in levels:
                bodies = level_bodies[concurrency]

                def run(url: str, asked: list[dict]) -> dict[str, float]:
                    return asyncio.run(load(url, asked, requests, concurrency, warm_body=warm))

                results[row(NOOP), concurrency] = run(f"{base}/noop", bodies)
                results[row(NOOP_BODY), concurrency] = run(f"{base}/noop-body", bodies)
                before = batching(base)
                results[row(CONVFM), concurrency] = run(base, bodies)
                batches[concurrency] = counters_since(before, batching(base))
                before = batching(base)
                results[row(RETURNING), concurrency] = run(base, bodies[-returning:])
                kept[concurrency] = counters_since(before, batching(base))
                results[row(CONVFM_TWO), concurrency] = run(f"{base}/two", bodies)
        finally:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
    return batches, kept


# ------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry entry or model dir (default: train a fresh one, 10,000 jobs)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per target at --concurrency (2000)")
    parser.add_argument("--requests-one", type=int, default=300, help="requests per target one at a time (300)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--catalog-jobs", type=int, default=100_000, help="catalog size to rank (default 100000)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for the local Ray")
    parser.add_argument("--proxy", choices=("serve", "haproxy", "both"), default="both",
                        help="the HTTP proxy of the Serve targets (serve.proxy); both: each in turn (default)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--explain", action="store_true", help="only the in-process cost of explanations: "
                        "recommend_many with and without them (no Ray)")
    parser.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.model, args.plain_server)
        return 0
    if args.smoke_test:
        args.requests, args.requests_one, args.concurrency, args.catalog_jobs = 100, 20, 4, 5_000

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="convfm-bench-"))
    sizes = (300, 200, 5_000) if args.smoke_test else (3_000, 10_000, 30_000)
    model = str(Path(args.model).absolute()) if args.model else str(build_model(workdir, *sizes))
    print(f"model {model} ready after {time.perf_counter() - started:.0f}s", file=sys.stderr)
    from convfm.model.score_cache import DEFAULT_BUDGET_MIB
    from serve.model_slot import ModelSlot

    slot = ModelSlot(model)
    slot.load()
    users = list(slot.require().extractor.user_rows)
    catalog_jobs = len(slot.require().extractor.job_catalog) - 1  # row 0 is the unknown job
    del slot
    if args.explain:
        print_explain_timing(explain_timing(model, users[:50], rounds=2 if args.smoke_test else 4))
        return 0
    levels = [(1, args.requests_one), (args.concurrency, args.requests)]
    # Each level's requests are of users no target was asked about before (the service keeps each user's scan
    # for their next request, convfm.model.score_cache); the warm-up asks for a user of neither level.
    warm, offset, level_bodies = {"user_id": users[-1], "k": 10}, 0, {}
    for concurrency, requests in levels:
        level_bodies[concurrency] = [{"user_id": users[(offset + i) % (len(users) - 1)], "k": 10}
                                     for i in range(requests)]
        offset += requests
    if offset > len(users) - 1:
        print(f"warning: {offset} requests over {len(users) - 1} users: some users repeat, and their kept scans "
              "answer them", file=sys.stderr)
    # the returning users' run asks again for users of the level just run, as many as the cache surely holds
    returning = max(1, DEFAULT_BUDGET_MIB * 2**20 // (4 * (catalog_jobs + 1)) // 2)

    catalog = catalog_timing(model, args.catalog_jobs, repeats=3 if args.smoke_test else 6)
    # users of neither level nor the warm-up: every request of a level stays a new user's
    scan = open_timing(model, users[offset: offset + 60] if offset + 60 < len(users) else users[-61:-1])
    results: dict[tuple[str, int], dict[str, float]] = {}
    plain_port = free_port()
    plain = subprocess.Popen([sys.executable, __file__, "--plain-server", str(plain_port), "--model", model],
                             cwd=ROOT)
    try:
        wait_healthy(f"http://127.0.0.1:{plain_port}")
        for concurrency, requests in levels:
            results[PLAIN, concurrency] = asyncio.run(
                load(f"http://127.0.0.1:{plain_port}", level_bodies[concurrency], requests, concurrency,
                     warm_body=warm))
    finally:
        plain.terminate()
        plain.wait(30)
    batches: dict[str, dict[int, dict[str, float]]] = {}  # per proxy, the one-replica app's counters per load
    kept: dict[str, dict[int, dict[str, float]]] = {}  # the same, over its returning users' load
    proxies = ("serve", "haproxy") if args.proxy == "both" else (args.proxy,)
    for proxy in proxies:
        batches[proxy], kept[proxy] = serve_rows(model, free_port(), args.cpus, proxy, levels, level_bodies, warm,
                                                 returning, results)
    print(f"\n### POST /recommend (k=10), {catalog_jobs:,}-job catalog, loopback (the client on the same cores)\n")
    print(f"{scan['open']:,} of the {scan['jobs']:,} jobs open at the requests' time; one new user's request in "
          f"process, one torch thread: {scan['open_ms']:.1f} ms scanning the open jobs (the service's way), "
          f"{scan['whole_ms']:.1f} ms scanning the whole catalog\n")
    print("| target | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, concurrency), r in results.items():
        print(f"| {name} | {concurrency} | {r['requests']} | {r['req_s']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} "
              f"| {r['p99']:.1f} | {r['errors']} |")
    print("\nWhere an answer's time went (medians over the answers of each row; `total`, `read` and `score` are "
          "the serving process's Server-Timing, `outside` what the client waited beyond `total`: Serve's proxy and "
          "the way there and back):\n")
    print("| target | concurrency | p50 ms | total | read the body | score | outside |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, concurrency), r in results.items():
        if "total_p50" in r:
            print(f"| {name} | {concurrency} | {r['p50']:.1f} | {r['total_p50']:.1f} | {r['read_p50']:.1f} | "
                  f"{r['score_p50']:.1f} | {r['outside_p50']:.1f} |")
    for proxy, concurrency, b in ((p, c, b) for p in batches for c, b in batches[p].items()):
        print(f"\nconvfm{label(proxy)}, 1 replica, concurrency {concurrency}: {b['requests']:.0f} requests (warm-up "
              f"included) in {b['batches']:.0f} batches, {b['requests'] / max(1, b['batches']):.1f} per batch "
              f"(largest so far {b['largest_batch']:.0f}); scoring "
              f"{1000 * b['compute_s'] / max(1, b['requests']):.1f} ms per request "
              f"with {b['torch_threads']:.0f} torch thread(s); kept scans: {b['cache_hits']:.0f} hits, "
              f"{b['cache_misses']:.0f} misses")
    for proxy, concurrency, b in ((p, c, b) for p in kept for c, b in kept[p].items()):
        print(f"\nreturning users{label(proxy)}, concurrency {concurrency}: {b['requests']:.0f} requests (warm-up "
              f"included) of {min(returning, len(level_bodies[concurrency]))} users, kept scans "
              f"{b['cache_hits']:.0f} hits, {b['cache_misses']:.0f} misses; scoring "
              f"{1000 * b['compute_s'] / max(1, b['requests']):.1f} ms "
              "per request")
    c = catalog
    print(f"\n### Top-10 over a {c['jobs']:,}-job catalog for one user (torch threads: {c['threads']})\n")
    print("| path | time | speedup |")
    print("|---|---:|---:|")
    print(f"| full forward (model over every pair) | {c['full_s'] * 1000:.0f} ms | 1.0x |")
    print(f"| fast path (job side precomputed) | {c['fast_s'] * 1000:.1f} ms | {c['full_s'] / c['fast_s']:.1f}x |")
    print(f"| job-side precompute, once per model load | {c['precompute_s']:.2f} s | |")
    print(f"\nmax |fast - full| logit over the catalog: {c['max_abs_diff']:.1e}; same top-10: {c['same_top10']}")
    for proxy in proxies:
        print_targets(results, args.concurrency, catalog_jobs, scan["open"], catalog, proxy)
    print(f"\ntotal run {time.perf_counter() - started:.0f}s")
    return 0


def counters_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The counters' growth between two ``batching`` reads (the largest batch and the threads as they are)."""
    return {key: value - before[key] if key not in ("largest_batch", "torch_threads") else value
            for key, value in after.items()}


def print_targets(results: dict[tuple[str, int], dict[str, float]], concurrency: int, catalog_jobs: int,
                  open_jobs: int, catalog: dict[str, float], proxy: str) -> None:
    """Issue 15's serving targets behind ``proxy``, each as measured in this run against the no-op behind the
    same proxy (and, behind HAProxy, beside them, against the no-op behind Serve's own when it ran)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    noop, noop_body, convfm, returning = (name + label(proxy) for name in (NOOP, NOOP_BODY, CONVFM, RETURNING))
    extra = results[convfm, 1]["p50"] - results[noop, 1]["p50"]
    ratio = results[convfm, concurrency]["req_s"] / results[noop, concurrency]["req_s"]
    errors = sum(r["errors"] for (name, _), r in results.items()
                 if name in (convfm, CONVFM_TWO + label(proxy)))
    fast_ms = catalog["fast_s"] * 1000
    front = "Serve's own proxy" if proxy == "serve" else "HAProxy"
    print(f"\ntargets behind {front} ({catalog_jobs:,}-job catalog for the load, {open_jobs:,} of its jobs "
          "open at the requests' time and scanned; convfm with 1 replica):")
    print(f"- p50 one at a time: convfm {results[convfm, 1]['p50']:.1f} ms, no-op {results[noop, 1]['p50']:.1f} ms: "
          f"{extra:+.1f} ms (at most +5 ms): {verdict(extra <= 5.0)}")
    print(f"- req/s at concurrency {concurrency}: {ratio:.2f}x the no-op endpoint's (at least 0.7x): "
          f"{verdict(ratio >= 0.7)}")
    print(f"- errors: {errors} (0): {verdict(errors == 0)}")
    beside = [("against the no-op endpoint that reads its body", noop_body, convfm),
              ("returning users, their scans kept, against the no-op", noop, returning)]
    if proxy != "serve" and (NOOP, 1) in results:
        beside.append(("against the no-op endpoint behind Serve's own proxy", NOOP, convfm))
    for what, against, target in beside:
        print(f"- (beside the targets) {what}: p50 {results[target, 1]['p50'] - results[against, 1]['p50']:+.1f} ms, "
              f"{results[target, concurrency]['req_s'] / results[against, concurrency]['req_s']:.2f}x its req/s at "
              f"concurrency {concurrency}")
    print(f"- exact top-10 over {catalog['jobs']:,} jobs: {fast_ms:.1f} ms with {catalog['threads']} thread(s) "
          f"(at most 25 ms): {verdict(fast_ms <= 25.0 and bool(catalog['same_top10']))}")


if __name__ == "__main__":
    sys.exit(main())
