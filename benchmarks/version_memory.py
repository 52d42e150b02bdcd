"""Memory per extra model version held by a Ranker replica under an A/B split (docs/SERVING.md).

Trains the tiny test model (``tests/conftest.py``'s ``tiny``: 600 users, 300 jobs, 20k interactions, 2 epochs,
embedding 8), publishes it ``--versions`` times, then in one process loads the first version as a replica's
primary ``ModelSlot`` and each further one into ``VersionSlots``, as ``serve/ranker.py`` does, printing the
resident set size (RSS) after each load and its growth. ``--users/--jobs`` scale the catalog.

    .venv/bin/python benchmarks/version_memory.py [--versions 4 --users 600 --jobs 300 --interactions 20000]
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
from pathlib import Path

import psutil
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.store.artifacts import save_model_dir
from convfm.store.registry import publish
from convfm.store.serving_data import serving_extra_json
from convfm.training.in_process import fit_in_process
from serve.model_slot import ModelSlot, VersionSlots


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--interactions", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_market(generate_market(users=args.users, jobs=args.jobs, interactions=args.interactions, seed=0),
                     root / "market")
        data = prepare_data(DataConfig(path=str(root / "market")))
        model, history = fit_in_process(data, ModelConfig(embedding_dim=8, conv_filters=8, hidden_dims=(16, 8)),
                                        TrainConfig(num_epochs=2, batch_size=512, eval_negatives=20, use_amp=False))
        model_dir = save_model_dir(root / "export", model, data.extractor, metrics=history[-1],
                                   extra_json=serving_extra_json(data))
        for _ in range(args.versions):
            publish(model_dir, root / "registry", "tiny")
        entry = root / "registry" / "tiny"
        size_mib = sum(p.stat().st_size for p in (entry / "v0001").iterdir()) / 2**20
        # a fresh process: RSS does not shrink after training, so growth measured here would reuse freed memory
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            before, rows = pool.apply(measure, (str(entry), args.versions))
    print(f"model directory on disk: {size_mib:.2f} MiB; RSS before any model: {before:.1f} MiB")
    print(f"{'loaded':<18}{'RSS MiB':>10}{'growth MiB':>12}")
    last = before
    for name, rss in rows:
        print(f"{name:<18}{rss:>10.1f}{rss - last:>12.1f}")
        last = rss
    if len(rows) > 1:  # one load at a time is within the allocator's noise at this size: the mean over all
        total = rows[-1][1] - rows[0][1]
        print(f"{len(rows) - 1} extra versions: +{total:.1f} MiB, {total / (len(rows) - 1):.1f} MiB each on average")


def measure(entry: str, versions: int) -> tuple[float, list[tuple[str, float]]]:
    """RSS before any model, then after the primary and each further version is loaded (as a replica does)."""
    torch.set_num_threads(1)
    import serve.scorer  # noqa: F401 - the code, imported before the baseline

    before = rss_mib()
    primary = ModelSlot(entry)
    assert primary.load("v0001")["ok"]
    rows = [("v0001 (primary)", rss_mib())]
    variants = VersionSlots(primary)
    for number in range(2, versions + 1):
        assert all(r["ok"] for r in variants.hold([f"v{n:04d}" for n in range(2, number + 1)]))
        rows.append((f"+ v{number:04d}", rss_mib()))
    return before, rows

if __name__ == "__main__":
    main()
