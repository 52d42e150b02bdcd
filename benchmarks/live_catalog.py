"""How fast new jobs become recommendable through the live catalog (``POST /jobs``), without retraining.

A synthetic market of ``--jobs`` jobs is fitted (extractor only) and served by one in-process Scorer with the
default ConvFM, untrained (applying and scoring cost the same whatever the weights), behind the HTTP app over
a ``LocalBackend`` and a live store in a temp folder (no Ray). Each round posts ``--new`` new jobs in a place
no other job is, then asks ``/recommend`` with that location as filter until one of them comes back:

- apply CPU: ``time.process_time`` around one Scorer applying that delta (what each Ranker replica spends:
  encoding, job sides of the new rows only, metadata), measured on a second Scorer that follows the store;
- POST -> recommend: wall time from sending ``POST /jobs`` to a ``/recommend`` answer holding a new job.

With ``--catch-up N``, instead: what a replica that starts (autoscaling, a restart, a model reload) and a
training run on the event log pay for a live catalog of N small deltas (``--new`` jobs each, one model job
expired each, as a board posting job by job writes them): a fresh Scorer applying them folded into runs
(``LiveJobs.apply``, the service's way) against one at a time, and ``jobs_after`` folded against one at a time.

    .venv/bin/python benchmarks/live_catalog.py [--jobs 100000 --new 1000 --rounds 5 --users 5000 --seed 0]
    .venv/bin/python benchmarks/live_catalog.py --jobs 10000 --new 2 --catch-up 2000
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from convfm.config import ModelConfig
from convfm.data.liveness import job_windows
from convfm.data.synth import generate_market
from convfm.features.jobs import JobFeatureExtractor
from convfm.model.network import ConvFM
from convfm.store.artifacts import LoadedModel
from convfm.store.live_catalog import CatalogStore
from convfm.store.serving_data import ServingData
from serve.http import LocalBackend, build_http_app
from serve.live_catalog import apply_deltas, catch_up
from serve.model_slot import ModelSlot
from serve.scorer import Scorer

with warnings.catch_warnings():  # starlette's note about its httpx-based TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY = "benchmark-key-0123456789"


def scorer_of(model: ConvFM, extractor: JobFeatureExtractor, source: Path) -> Scorer:
    """A Scorer over its own copy of the extractor (the live catalog grows it in place)."""
    extractor.save(source / "extractor")
    copy = JobFeatureExtractor.load(source / "extractor")
    return Scorer(LoadedModel(model, copy, {}, {}, source / "v0001"), ServingData.empty())


def _number(value: object) -> object:
    return None if value is None or pd.isna(value) else float(value)


def postings(template: pd.DataFrame, round_: int) -> list[dict]:
    """``template``'s jobs under new ids, all in one place that no other job has."""
    out = []
    for i, job in enumerate(template.to_dict("records")):
        out.append({"job_id": f"live-{round_}-{i}", "title": job["title"], "description": job["description"],
                    "skills": [s for s in str(job["skills"] or "").split(";") if s], "location": f"Benchmark City {round_}",
                    "company": job["company"], "job_type": job["job_type"],
                    "experience_level": job["experience_level"], "salary_min": _number(job["salary_min"]),
                    "salary_max": _number(job["salary_max"])})
    return out


def catch_up_timing(args: argparse.Namespace) -> None:
    """``--catch-up``: deltas applied folded and one at a time, by a fresh Scorer and by ``jobs_after``."""
    from convfm.store.live_catalog import jobs_after

    market = generate_market(args.users, args.jobs + args.new * args.catch_up, args.users * 5, seed=args.seed)
    jobs, spare = market.jobs.iloc[: args.jobs], market.jobs.iloc[args.jobs :]
    interactions = market.interactions[market.interactions["job_id"].isin(set(jobs["job_id"]))]
    extractor = JobFeatureExtractor().fit(jobs, interactions, market.users, job_windows(jobs, 30.0))
    torch.manual_seed(args.seed)
    model = ConvFM(ModelConfig(), extractor.feature_map).eval()
    table = jobs.assign(posted_at=pd.to_datetime(jobs["posted_at"]), expires_at=pd.to_datetime(jobs["expires_at"]))
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        store = CatalogStore(work / "live")
        for i in range(args.catch_up):
            store.append(postings(spare.iloc[i * args.new : (i + 1) * args.new], i), [jobs["job_id"].iloc[i]])
        deltas = store.read()
        print(f"\n{args.catch_up:,} deltas of {args.new} new jobs and 1 expired, over {args.jobs:,} jobs; default "
              f"ConvFM, untrained; torch threads {torch.get_num_threads()}\n")
        print("| what | folded s | one at a time s | ratio |")
        print("|---|---:|---:|---:|")
        walls = []
        for fold in (True, False):
            scorer = scorer_of(model, extractor, work)
            started = time.perf_counter()
            for run in [deltas] if fold else [[d] for d in deltas]:
                apply_deltas(scorer, run)
            walls.append(time.perf_counter() - started)
            assert scorer.live_jobs.version == args.catch_up
        print(f"| a fresh replica applies them | {walls[0]:.2f} | {walls[1]:.2f} | {walls[1] / walls[0]:.0f}x |")
        started = time.perf_counter()
        folded, _ = jobs_after(table, deltas, 30.0)
        walls = [time.perf_counter() - started]
        started = time.perf_counter()
        for delta in deltas:
            table, _ = jobs_after(table, [delta], 30.0)
        walls.append(time.perf_counter() - started)
        assert folded["job_id"].tolist() == table["job_id"].tolist()
        print(f"| training reads them into the jobs table | {walls[0]:.2f} | {walls[1]:.2f} | "
              f"{walls[1] / walls[0]:.0f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the served catalog")
    parser.add_argument("--new", type=int, default=1000, help="jobs added per round (one POST)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catch-up", type=int, metavar="N", help="time catching up on N deltas of --new jobs")
    args = parser.parse_args()
    if args.catch_up:
        catch_up_timing(args)
        return
    started = time.perf_counter()
    market = generate_market(args.users, args.jobs + args.new, args.users * 5, seed=args.seed)
    jobs, spare = market.jobs.iloc[: args.jobs], market.jobs.iloc[args.jobs :]
    interactions = market.interactions[market.interactions["job_id"].isin(set(jobs["job_id"]))]
    extractor = JobFeatureExtractor().fit(jobs, interactions, market.users, job_windows(jobs, 30.0))
    torch.manual_seed(args.seed)
    model = ConvFM(ModelConfig(), extractor.feature_map).eval()
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        served, follower = scorer_of(model, extractor, work), scorer_of(model, extractor, work)
        slot = ModelSlot(work / "unused")
        slot.current = served
        store = CatalogStore(work / "live")
        app = build_http_app(LocalBackend(slot, store.root.parent), api_key_digest=hashlib.sha256(KEY.encode()).hexdigest(),
                             max_body_bytes=64 * 2**20)
        client = TestClient(app, base_url="http://localhost")
        user = extractor.user_ids[1]
        print(f"\n{served.n_jobs - 1:,} jobs served, {args.new:,} new per round; default ConvFM, untrained; torch "
              f"threads {torch.get_num_threads()}; set-up {time.perf_counter() - started:.0f}s\n")
        print("| round | catalog before | apply CPU s | apply wall s | POST -> recommend wall s |")
        print("|---:|---:|---:|---:|---:|")
        cpu, wall, visible = [], [], []
        for round_ in range(args.rounds):
            body = {"upsert": postings(spare, round_)}
            ask = {"user_id": user, "k": 10, "filters": {"location": f"Benchmark City {round_}"}}
            before = served.n_jobs - 1
            sent = time.perf_counter()
            response = client.post("/jobs", json=body, headers={"X-API-Key": KEY})
            response.raise_for_status()
            while not client.post("/recommend", json=ask).json()["items"]:
                time.sleep(0.01)
            visible.append(time.perf_counter() - sent)
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            catch_up(follower, store, response.json()["catalog_version"])
            cpu.append(time.process_time() - cpu_start)
            wall.append(time.perf_counter() - wall_start)
            assert follower.n_jobs == served.n_jobs
            print(f"| {round_ + 1} | {before:,} | {cpu[-1]:.3f} | {wall[-1]:.3f} | {visible[-1]:.3f} |", flush=True)
        print(f"\nmedians: apply CPU {statistics.median(cpu):.3f} s, apply wall {statistics.median(wall):.3f} s, "
              f"POST -> recommend {statistics.median(visible):.3f} s")


if __name__ == "__main__":
    main()
