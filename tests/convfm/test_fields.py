"""Vocabularies, the feature-map contract and example gathering."""
import json

import numpy as np
import pytest

from convfm.data.batching import ExampleSet
from convfm.errors import ArtifactError
from convfm.features.fields import PAD, UNK, EncodedTable, FeatureMap, FieldSpec, Vocabulary


def test_vocabulary_reserves_padding_and_unknown():
    vocab = Vocabulary.build(["a", "b", "a", "c", "", "c"], min_freq=2)
    assert vocab.values == ["a", "c"] and len(vocab) == 4
    assert vocab.lookup(["a", "c", "b", "", "zzz"]).tolist() == [2, 3, UNK, PAD, UNK]
    assert [vocab.decode(i) for i in (PAD, UNK, 2, 3, 4)] == [None, None, "a", "c", None]


def test_lookup_lists_keeps_known_values_first_and_caps_length():
    vocab = Vocabulary(["x", "y"])
    out = vocab.lookup_lists([["q", "x", "y", "r"], [], ["y"]], max_len=3)
    assert out.tolist() == [[2, 3, UNK], [0, 0, 0], [3, 0, 0]]


def test_feature_map_json_round_trip_and_version(tmp_path):
    fmap = FeatureMap((FieldSpec("user_id", "categorical", "user", "user", 5),
                       FieldSpec("text", "dense", "job", width=4)))
    fmap.save(tmp_path / "fm.json")
    assert FeatureMap.load(tmp_path / "fm.json") == fmap
    data = json.loads((tmp_path / "fm.json").read_text())
    data["format_version"] = 99
    (tmp_path / "fm.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format_version 99"):
        FeatureMap.load(tmp_path / "fm.json")


def test_feature_map_rejects_job_fields_before_user_fields():
    with pytest.raises(ValueError, match="ordered by side"):
        FeatureMap((FieldSpec("job_id", "categorical", "job", "job", 5),
                    FieldSpec("user_id", "categorical", "user", "user", 5)))


def test_shared_vocab_must_agree_on_size():
    with pytest.raises(ValueError, match="disagree"):
        FeatureMap((FieldSpec("a", "multi", "user", "skill", 5, max_len=2),
                    FieldSpec("b", "multi", "job", "skill", 6, max_len=2)))


def test_example_set_gathers_and_joins_sides():
    users = EncodedTable(np.array([[0], [5], [6]]), np.zeros((3, 1, 2), np.int64), np.zeros((3, 0), np.float32))
    jobs = EncodedTable(np.array([[0, 1], [7, 2]]), np.array([[[0, 0, 0]], [[3, 4, 5]]]),
                        np.array([[0.0], [1.5]], np.float32))
    examples = ExampleSet([users, jobs], rows=np.array([[2, 1], [1, 0]]), labels=np.array([1, 0]))
    batch, labels = examples.gather(np.array([0, 1]))
    assert batch.cat.tolist() == [[6, 7, 2], [5, 0, 1]]
    assert batch.multi.shape == (2, 2, 3)  # user lists padded from 2 to 3
    assert batch.multi[0, 1].tolist() == [3, 4, 5]
    assert batch.dense.tolist() == [[1.5], [0.0]]
    assert labels.tolist() == [1.0, 0.0]


def test_shards_partition_the_examples():
    table = EncodedTable(np.arange(10)[:, None], np.zeros((10, 0, 0), np.int64), np.zeros((10, 0), np.float32))
    examples = ExampleSet([table], rows=np.arange(10), labels=np.arange(10) % 2)
    shards = [examples.shard(r, 3) for r in range(3)]
    rows = sorted(int(r) for s in shards for r in s.rows[:, 0])
    assert rows == list(range(10))
    order_a = [b.cat[:, 0].tolist() for b, _ in examples.batches(4, shuffle=True, seed=1)]
    order_b = [b.cat[:, 0].tolist() for b, _ in examples.batches(4, shuffle=True, seed=1)]
    assert order_a == order_b and sorted(sum(order_a, [])) == list(range(10))


def test_batches_cut_list_padding_nobody_uses_without_changing_scores():
    import torch

    from convfm.config import ModelConfig
    from convfm.model.network import ConvFM

    fmap = FeatureMap((FieldSpec("user_skills", "multi", "user", "skill", 9, max_len=6),
                       FieldSpec("job_id", "categorical", "job", "job", 4),
                       FieldSpec("job_skills", "multi", "job", "skill", 9, max_len=6)))
    users = EncodedTable(np.zeros((2, 0), np.int64), np.array([[[2, 0, 0, 0, 0, 0]], [[3, 4, 0, 0, 0, 0]]]),
                         np.zeros((2, 0), np.float32))
    jobs = EncodedTable(np.array([[2], [3]]), np.array([[[5, 6, 7, 0, 0, 0]], [[0, 0, 0, 0, 0, 0]]]),
                        np.zeros((2, 0), np.float32))
    examples = ExampleSet([users, jobs], rows=np.array([[0, 0], [1, 1], [1, 0]]), labels=np.zeros(3))
    batch, _ = examples.gather(np.arange(3))
    assert batch.multi.shape == (3, 2, 3)  # the longest list (job 0) has 3 skills, not max_len 6
    assert batch.multi[2].tolist() == [[3, 4, 0], [5, 6, 7]]
    full = torch.cat([batch.multi, torch.zeros(3, 2, 3, dtype=torch.int64)], dim=2)  # padded to max_len
    torch.manual_seed(0)
    model = ConvFM(ModelConfig(embedding_dim=4, conv_filters=3, hidden_dims=(5,)), fmap).eval()
    assert torch.allclose(model(*batch), model(batch.cat, full, batch.dense), atol=1e-6)
