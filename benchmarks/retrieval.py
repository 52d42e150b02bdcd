"""Retrieve-then-rerank (``convfm.model.retrieval``) against the exact full scan, per catalog size.

Per size: a catalog of synthetic jobs, each field (categorical column, list field, dense block) taken from an
independently drawn job of the model's fitted catalog, so rows are distinct and realistic field by field; the
exact full-scan top-10 per user (``CatalogRanker.top_k``); retrieve-then-rerank top-10 (``RetrievalIndex.top_k``)
with K candidates; recall@10 against the exact top-10, over known users and cold-start profiles; index build
time and memory. Times are medians over the users.

    python benchmarks/retrieval.py --model models/NAME [--sizes 10000,100000,1000000 --counts 250,1000]
    python benchmarks/retrieval.py --smoke-test --model DIR   # seconds: tiny sizes, checks that it runs

Without ``--model`` it trains the default model of ``benchmarks/serve_load.py`` first (minutes).

``--scorer-jobs N`` times the service's own path instead: ``Scorer.recommend_many`` one request at a time (k=10,
no explanations) with ``retrieval_candidates`` K and, on the same Scorer with its index detached, the exact full
scan, over a synthetic market of N jobs (extractor fitted, the default ConvFM untrained: a request costs the same
whatever the weights), plain and with a ``job_type`` filter; recall@10 is the overlap of the two answers.

    python benchmarks/retrieval.py --scorer-jobs 100000 --counts 1000 --threads 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from convfm.features.fields import EncodedTable
from convfm.model.ranking import CatalogRanker
from convfm.model.retrieval import RetrievalIndex


def mixed_catalog(ranker: CatalogRanker, jobs: int, seed: int) -> EncodedTable:
    """Row 0 (unknown job) + ``jobs`` synthetic rows, each field drawn from a random real job (rows >= 1)."""
    real = ranker.job_table(np.arange(1, ranker.n_jobs))
    rng = np.random.default_rng(seed)
    pick = lambda: rng.integers(0, len(real), size=jobs)  # noqa: E731
    cat = np.stack([real.cat[pick(), i] for i in range(real.cat.shape[1])], axis=1)  # (N, Fc)
    multi = np.stack([real.multi[pick(), i] for i in range(real.multi.shape[1])], axis=1)  # (N, Fm, L)
    unknown = ranker.job_table(np.array([0]))
    return EncodedTable(np.concatenate([unknown.cat, cat]), np.concatenate([unknown.multi, multi]),
                        np.concatenate([unknown.dense, real.dense[pick()]]))


def bench_users(extractor, known: int, cold: int, seed: int) -> EncodedTable:
    """``known`` users of the training data (their stored history) then ``cold`` unknown users with a random
    profile (3-5 skills, a location, a level): every user-side field encoded."""
    rows = np.arange(1, 1 + min(known, len(extractor.user_catalog) - 1))
    users = extractor.user_side(extractor.user_catalog.take(rows), np.array(extractor.user_ids, dtype=object)[rows])
    rng = np.random.default_rng(seed)
    vocab = lambda name: [v for v in extractor.vocabs[name].values if v]  # noqa: E731
    profiles = pd.DataFrame({
        "user_id": [f"cold-{i}" for i in range(cold)],
        "skills": [";".join(rng.choice(vocab("skill"), size=rng.integers(3, 6), replace=False)) for _ in range(cold)],
        "location": rng.choice(vocab("location"), size=cold), "experience_level": rng.choice(vocab("experience_level"),
                                                                                             size=cold)})
    new = extractor.user_side(extractor.transform_users(profiles), profiles["user_id"].to_numpy(dtype=object))
    return EncodedTable(*(np.concatenate([a, b]) for a, b in zip(users.arrays().values(), new.arrays().values())))


def exact_top10(ranker: CatalogRanker, users: EncodedTable) -> np.ndarray:
    """The exact top-10 rows per user (U, 10), scored 8 users per pass; row 0 never counts."""
    out = []
    for start in range(0, len(users), 8):
        with torch.inference_mode():
            scores = ranker.score_all(users.take(np.arange(start, min(start + 8, len(users)))))  # (u, N)
            scores[:, 0] = -torch.inf
        out.append(torch.topk(scores, 10, dim=1).indices.cpu().numpy())
    return np.concatenate(out)


def median_ms(fn, users: EncodedTable) -> tuple[float, list]:
    """fn(one user) for every user -> (median ms, results)."""
    times, results = [], []
    for i in range(len(users)):
        started = time.perf_counter()
        results.append(fn(users.take([i])))
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000), results


def measure(model, extractor, jobs: int, users: EncodedTable, known: int, args) -> list[dict]:
    base = CatalogRanker(model, extractor)
    started = time.perf_counter()
    ranker = CatalogRanker(model, extractor, jobs=mixed_catalog(base, jobs, args.seed))
    precompute = time.perf_counter() - started
    started = time.perf_counter()
    index = RetrievalIndex(ranker, dims=args.dims, fit_rows=args.fit_rows, seed=args.seed)
    build = time.perf_counter() - started
    truth = exact_top10(ranker, users)
    timed = users.take(np.arange(min(args.timed_users, len(users))))
    exact_ms, _ = median_ms(lambda user: ranker.top_k(user, 10), timed)
    out = []
    for count in args.counts:
        index.top_k(users.take([0]), 10, count)  # warm-up
        ms, found = median_ms(lambda user: index.top_k(user, 10, count)[0], users)
        recall = np.array([len(set(rows) & set(t)) / 10 for rows, t in zip(found, truth)])
        out.append({"jobs": jobs, "count": count, "exact_ms": exact_ms, "retrieval_ms": ms,
                    "recall_known": recall[:known].mean(), "recall_cold": recall[known:].mean(),
                    "recall": recall.mean(), "precompute_s": precompute, "build_s": build,
                    "index_mb": (index.coords.numel() * index.coords.element_size() + len(index)) / 2**20})
    return out


def load_model(path: str):
    from convfm.store.registry import resolve
    from serve.scorer import Scorer

    scorer = Scorer.load(resolve(path))
    return scorer.ranker.model, scorer.extractor


def scorer_rows(args) -> None:
    """The ``--scorer-jobs`` table (see the module docstring)."""
    import copy

    from convfm.config import ModelConfig
    from convfm.data.liveness import job_windows
    from convfm.data.synth import generate_market
    from convfm.features.jobs import JobFeatureExtractor
    from convfm.model.network import ConvFM
    from convfm.store.artifacts import LoadedModel
    from convfm.store.serving_data import ServingData
    from serve.schemas import RecommendRequest
    from serve.scorer import Scorer

    market = generate_market(5000, args.scorer_jobs, 25_000, seed=args.seed)
    extractor = JobFeatureExtractor().fit(market.jobs, market.interactions, market.users,
                                          job_windows(market.jobs, 30.0))
    torch.manual_seed(args.seed)
    model = ConvFM(ModelConfig(), extractor.feature_map).eval()
    job_type = market.jobs["job_type"].value_counts().index[0]
    users = market.interactions["user_id"].drop_duplicates().iloc[: args.users].tolist()
    print(f"\n### Scorer.recommend_many, one request at a time: {args.scorer_jobs:,} jobs, k=10, {len(users)} known "
          f"users, torch threads {args.threads}\n")
    print("| K | load s (job sides + index) | filter | exact ms | retrieve+rerank ms | speed-up | recall@10 |")
    print("|---:|---:|---|---:|---:|---:|---:|", flush=True)
    for count in args.counts:
        started = time.perf_counter()
        scorer = Scorer(LoadedModel(model, extractor, {}, {}, Path("synthetic/v0001")), ServingData.empty(), count)
        load = time.perf_counter() - started
        exact = copy.copy(scorer)
        exact.index = None  # the same catalog, scanned in full
        for label, filters in (("none", {}), (f"job_type={job_type}", {"job_type": job_type})):
            requests = [RecommendRequest.model_validate({"user_id": u, "k": 10, "filters": filters}) for u in users]
            times = {"exact": [], "retrieval": []}
            answers = {"exact": [], "retrieval": []}
            for request in requests:
                for name, which in (("exact", exact), ("retrieval", scorer)):
                    started = time.perf_counter()
                    items = which.recommend_many([request])[0]["items"]
                    times[name].append(time.perf_counter() - started)
                    answers[name].append({i["job_id"] for i in items})
            exact_ms, ms = (float(np.median(times[n][1:]) * 1000) for n in ("exact", "retrieval"))  # 1st: warm-up
            recall = np.mean([len(a & b) / max(1, len(a)) for a, b in zip(answers["exact"], answers["retrieval"])])
            print(f"| {count} | {load:.1f} | {label} | {exact_ms:.1f} | {ms:.1f} | {exact_ms / ms:.1f}x | "
                  f"{recall:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry entry or model dir (default: train serve_load's model)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalog sizes, comma-separated")
    parser.add_argument("--counts", default="250,1000", help="candidates K re-ranked, comma-separated")
    parser.add_argument("--dims", type=int, default=32, help="index dimensions r (default 32)")
    parser.add_argument("--fit-rows", type=int, default=2048, help="rows M fitting each user (default 2048)")
    parser.add_argument("--users", type=int, default=50, help="users for recall, a fifth of them cold-start")
    parser.add_argument("--timed-users", type=int, default=5, help="users timed on the exact full scan")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer-jobs", type=int, help="time Scorer.recommend_many on a synthetic market of this "
                        "many jobs instead (see the module docstring)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks that everything runs")
    args = parser.parse_args()
    if args.smoke_test:
        args.sizes, args.counts, args.users, args.fit_rows, args.dims = "500,2000", "50", 6, 200, 8
    args.counts = [int(c) for c in args.counts.split(",")]
    torch.set_num_threads(args.threads)
    if args.scorer_jobs:
        scorer_rows(args)
        return 0
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from serve_load import build_model

        args.model = str(build_model(Path(tempfile.mkdtemp(prefix="convfm-retrieval-")), 2_000, 1_000, 30_000))
    model, extractor = load_model(args.model)
    cold = max(1, args.users // 5)
    users = bench_users(extractor, args.users - cold, cold, args.seed)
    known = len(users) - cold
    print(f"\n### Top-10 per user: exact full scan vs retrieve-then-rerank (torch threads {args.threads}; "
          f"r={args.dims}, M={args.fit_rows}; {known} known + {cold} cold-start users)\n")
    print("| jobs | K | exact ms/user | retrieve+rerank ms/user | speed-up | recall@10 (known / cold) "
          "| index build s | index MB | job-side precompute s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for jobs in (int(s) for s in args.sizes.split(",")):
        for r in measure(model, extractor, jobs, users, known, args):
            print(f"| {r['jobs']:,} | {r['count']} | {r['exact_ms']:.1f} | {r['retrieval_ms']:.1f} "
                  f"| {r['exact_ms'] / r['retrieval_ms']:.1f}x | {r['recall']:.3f} ({r['recall_known']:.3f} / "
                  f"{r['recall_cold']:.3f}) | {r['build_s']:.2f} | {r['index_mb']:.1f} | {r['precompute_s']:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
