"""Milliseconds per training step, split into forward / backward / optimizer, for the default ConvFM at batch
1024 on the throughput benchmark's market (100k users, 100k jobs, 1M interactions; a 204k x 64 table).

Rows: dense embeddings with fused Adam (the default), with torch's unfused Adam, sparse embeddings with
SparseAdam, and a floor: the embedding tables frozen (no embedding gradient or update at all), which is the
compute every mode pays. No mode can run faster than the floor, so dense / floor bounds what sparse gradients
can gain over dense ones.

    .venv/bin/python benchmarks/step_profile.py [--workdir DIR] [--steps 60] [--batch-size 1024]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from convfm.config import DataConfig, ModelConfig
from convfm.model.network import ConvFM
from convfm.model.optim import CombinedOptimizer, build_optimizer
from convfm.data.prepare import prepare_data
from train_throughput import market_dir, unfused_adam

WARMUP = 10


def step_times(model: ConvFM, optimizer: CombinedOptimizer, batches: list) -> tuple[float, float, float]:
    """Median (forward, backward, optimizer) milliseconds over the batches after a warm-up."""
    loss_fn, times = torch.nn.BCEWithLogitsLoss(), []
    model.train()
    for batch, labels in batches:
        t0 = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(*batch), labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return tuple(statistics.median(t[i] for t in times[WARMUP:]) * 1000 for i in range(3))


def configurations(feature_map) -> dict[str, tuple[ConvFM, CombinedOptimizer]]:
    def model(sparse: bool = False) -> ConvFM:
        torch.manual_seed(0)
        return ConvFM(dataclasses.replace(ModelConfig(), sparse_embeddings=sparse), feature_map)

    dense, unfused, sparse, frozen = model(), model(), model(sparse=True), model()
    for table in (frozen.embedding.table, frozen.linear.table):
        table.weight.requires_grad_(False)
    return {"dense, fused Adam (default)": (dense, build_optimizer(dense, 1e-3)),
            "dense, torch.optim.Adam (unfused)": (unfused, unfused_adam(unfused, 1e-3)),
            "sparse, SparseAdam": (sparse, build_optimizer(sparse, 1e-3)),
            "floor: embedding tables frozen": (frozen, build_optimizer(frozen, 1e-3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "convfm-train-throughput")
    parser.add_argument("--steps", type=int, default=60, help=f"steps per configuration ({WARMUP} warm-up)")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(DataConfig(path=str(market_dir(args.workdir, 100_000, 100_000, 1_000_000, seed=0))))
    batches = list(data.sets["train"].batches(args.batch_size, shuffle=True, seed=0, drop_last=True))[: args.steps]
    rows = {name: step_times(model, optimizer, batches)
            for name, (model, optimizer) in configurations(data.extractor.feature_map).items()}
    print(f"\nbatch {args.batch_size}, {len(batches) - WARMUP} timed steps, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    print("| configuration | forward ms | backward ms | optimizer ms | step ms | vs dense fused |")
    print("|---|---:|---:|---:|---:|---:|")
    dense_total = sum(next(iter(rows.values())))
    for name, (forward, backward, step) in rows.items():
        total = forward + backward + step
        print(f"| {name} | {forward:.1f} | {backward:.1f} | {step:.1f} | {total:.1f} | {dense_total / total:.2f}x |")


if __name__ == "__main__":
    main()
