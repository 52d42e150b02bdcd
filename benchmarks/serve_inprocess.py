"""The in-process timings of ``benchmarks/serve_load.py`` (no Ray, no HTTP): the 100k-catalog top-10, one new
user's request scanning the open jobs or the whole catalog, and the cost of explanations."""
from __future__ import annotations

import time

import numpy as np


def catalog_timing(model_path: str, n_jobs: int, repeats: int) -> dict[str, float]:
    """Top-10 over ``n_jobs`` jobs (the fitted catalog tiled) for one user: fast path vs full forward."""
    import torch

    from convfm.model.ranking import CatalogRanker
    from convfm.store.registry import resolve
    from serve.scorer import Scorer

    scorer = Scorer.load(resolve(model_path))
    extractor, model = scorer.extractor, scorer.ranker.model
    rows = np.concatenate([[0], np.random.default_rng(0).integers(1, len(extractor.job_catalog), size=n_jobs)])
    jobs = scorer.ranker.job_table(rows)  # every job-side field, recency now included
    started = time.perf_counter()
    ranker = CatalogRanker(model, extractor, jobs=jobs)
    precompute = time.perf_counter() - started
    user = extractor.user_side(extractor.user_catalog.take([1]), np.array([extractor.user_ids[1]], dtype=object))

    def fast() -> np.ndarray:
        return ranker.top_k(user, 10)[0]

    def full() -> np.ndarray:
        scores = ranker.full_scores(user)[0]
        scores[0] = -torch.inf
        return torch.topk(scores, 10).indices.numpy()

    fast()  # warm-up
    fast_s = min(_timed(fast) for _ in range(repeats))
    full_s = min(_timed(full) for _ in range(max(1, repeats // 3)))
    gap = float((ranker.score_all(user) - ranker.full_scores(user)).abs().max())
    # compared as catalog rows: a tiled row's copies score alike, and either path may take either copy
    same = bool(np.array_equal(np.sort(rows[fast()]), np.sort(rows[full()])))
    return {"jobs": n_jobs, "precompute_s": precompute, "fast_s": fast_s, "full_s": full_s, "max_abs_diff": gap,
            "same_top10": same, "threads": torch.get_num_threads()}


def open_timing(model_path: str, users: list[str]) -> dict[str, float]:
    """``recommend_many`` of one new user's k=10 request at a time with one torch thread (a replica's), scanning
    the jobs open at the request's time (the default) or the whole catalog, alternating per user -> median ms of
    each, and how many jobs are open."""
    import torch

    from convfm.features.context import now_micros
    from convfm.model import open_rows
    from convfm.store.registry import resolve
    from serve.schemas import RecommendRequest
    from serve.scorer import Scorer

    scorer, threads, share = Scorer.load(resolve(model_path)), torch.get_num_threads(), open_rows.OPEN_SHARE_FOR_VIEW
    times: dict[bool, list[float]] = {False: [], True: []}
    torch.set_num_threads(1)
    try:
        for user in users:
            for view in (True, False):
                open_rows.OPEN_SHARE_FOR_VIEW = share if view else 0.0
                request = RecommendRequest(user_id=user, k=10)
                times[view].append(_timed(lambda: scorer.recommend_many([request])))
    finally:
        open_rows.OPEN_SHARE_FOR_VIEW = share
        torch.set_num_threads(threads)
    mask = scorer._open(now_micros())
    return {"open": scorer.n_jobs - 1 if mask is None else int(mask[1:].sum()), "jobs": scorer.n_jobs - 1,
            "open_ms": float(np.median(times[True])) * 1000, "whole_ms": float(np.median(times[False])) * 1000}


def explain_timing(model_path: str, users: list[str], rounds: int) -> dict[str, float]:
    """``recommend_many`` of one k=10 request at a time, with and without explanations, alternating per user
    (a busy shared machine slows both alike) -> median ms of each."""
    import torch

    from convfm.store.registry import resolve
    from serve.schemas import RecommendRequest
    from serve.scorer import Scorer

    scorer = Scorer.load(resolve(model_path))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for user in users:
            for explain in (False, True):
                request = RecommendRequest(user_id=user, k=10, explain=explain)
                times[explain].append(_timed(lambda: scorer.recommend_many([request])))
    plain, explained = (float(np.median(times[e])) * 1000 for e in (False, True))
    return {"jobs": scorer.n_jobs - 1, "requests": len(times[True]), "plain_ms": plain, "explained_ms": explained,
            "threads": torch.get_num_threads()}


def print_explain_timing(t: dict[str, float]) -> None:
    print(f"\n### recommend_many, one k=10 request at a time, {t['jobs']:,}-job catalog, in process "
          f"(torch threads: {t['threads']}, {t['requests']} requests each)\n")
    print("| request | p50 ms | share of the request |\n|---|---:|---:|")
    print(f"| explain: false | {t['plain_ms']:.1f} | |")
    extra = t["explained_ms"] - t["plain_ms"]
    print(f"| explain: true | {t['explained_ms']:.1f} | explanations {extra:.1f} ms, "
          f"{extra / t['explained_ms']:.0%} |")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
