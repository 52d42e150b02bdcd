"""How training data reaches the workers: the side tables once, per rank only (rows, labels)."""
from __future__ import annotations

import numpy as np
import torch

from convfm.data.batching import ExampleSet
from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data


def test_side_tables_are_put_once_and_shards_carry_only_rows_and_labels(ray_local, market_dir):
    from train.driver import loop_config

    data = prepare_data(DataConfig(path=str(market_dir)))
    config = loop_config(data, ModelConfig(), TrainConfig(num_workers=2))
    assert len(config["train_tables"]) == 1 and len(config["train_shards"]) == 2
    tables = ray_local.get(config["train_tables"][0])
    # read-only arrays = views of the object store's single copy, not per-worker copies
    assert all(not t.multi.flags.writeable for t in tables)
    for rank, ref in enumerate(config["train_shards"]):
        rows, labels = ray_local.get(ref)
        assert isinstance(rows, np.ndarray) and isinstance(labels, np.ndarray)
        rebuilt, expected = ExampleSet(tables, rows, labels), data.sets["train"].shard(rank, 2, equal=True)
        assert len(rebuilt) == len(expected) == len(data.sets["train"]) // 2
        (got, got_labels), (want, want_labels) = rebuilt.gather(np.arange(50)), expected.gather(np.arange(50))
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and torch.equal(got_labels, want_labels)
