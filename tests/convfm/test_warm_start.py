"""Warm start in-process: vocabularies grow keeping old indices, published rows land on their values, an old
pair scores as the published model did before any step, bad sources and changed fields are refused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.data.prepare import prepare_data
from convfm.errors import ArtifactError, ConfigError
from convfm.features.fields import Vocabulary
from convfm.features.jobs import JobFeatureExtractor, TableFeatureExtractor
from convfm.model.network import ConvFM
from convfm.training.epoch import predict_proba
from convfm.training.in_process import fit_in_process
from convfm.training.warm_start import load_warm_start, warm_configs, warm_model


@pytest.fixture(scope="module")
def warm(published_old):
    start = load_warm_start(str(published_old.entry))
    data_config, model_config, notes = warm_configs(start, DataConfig(path=str(published_old.full)), ModelConfig())
    data = prepare_data(data_config, base=start.loaded.extractor)
    return start, data, model_config, notes, warm_model(start, data.extractor.feature_map, seed=0)


def test_source_resolves_to_a_pinned_version_and_the_published_config_is_used(warm, published_old):
    start, data, model_config, notes, model = warm
    assert start.record() == {"location": str((published_old.entry / "v0001").resolve()), "name": "old",
                              "version": "v0001"}
    assert model_config == published_old.model.config == model.config
    assert "model.embedding_dim: 64 -> 8" in notes and not any(n.startswith("data.") for n in notes)


def test_vocabularies_grew_and_old_values_kept_their_index(warm, published_old):
    old, new = published_old.old.extractor.vocabs, warm[1].extractor.vocabs
    assert set(new) == set(old)
    for name, vocab in old.items():
        assert new[name].values[: len(vocab.values)] == vocab.values, name
    assert len(new["user"]) > len(old["user"]) and len(new["job"]) > len(old["job"])  # the later ids


def test_old_rows_equal_the_published_rows_in_every_table(warm, published_old):
    old_vocabs, new_vocabs = published_old.old.extractor.vocabs, warm[1].extractor.vocabs
    published, model = published_old.model, warm[4]
    fresh = (torch.manual_seed(0), ConvFM(model.config, model.feature_map))[1]
    for part in ("embedding", "linear"):
        before, after, init = (getattr(m, part) for m in (published, model, fresh))
        for name, vocab in old_vocabs.items():
            (old_start, _), (new_start, new_size) = before.spans[name], after.spans[name]
            old_rows = [old_start + i for i in (0, 1, *map(vocab.index, vocab.values))]  # padding, unknown, values
            new_rows = [new_start + i for i in (0, 1, *map(new_vocabs[name].index, vocab.values))]
            assert torch.equal(after.table.weight[new_rows], before.table.weight[old_rows]), (part, name)
            added = list(range(new_start + len(vocab), new_start + new_size))  # new values: a fresh model's init
            assert torch.equal(after.table.weight[added], init.table.weight[added]), (part, name)
    tables = ("embedding.table.weight", "linear.table.weight", "embedding.cat_offsets", "linear.cat_offsets",
              "embedding.multi_offsets", "linear.multi_offsets")
    state = model.state_dict()
    for key, value in published.state_dict().items():
        if key not in tables:
            assert torch.equal(state[key], value), key


def test_an_old_pair_scores_as_the_published_model_before_any_step(warm, published_old):
    data = warm[1]
    frame = published_old.old.frames["train"].sample(400, random_state=0)
    before = predict_proba(published_old.model, published_old.old.extractor.example_set(frame), 256, "cpu")
    after = predict_proba(warm[4], data.extractor.example_set(frame), 256, "cpu")
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    fresh = predict_proba(ConvFM(warm[4].config, data.extractor.feature_map), data.extractor.example_set(frame),
                          256, "cpu")
    assert np.abs(fresh - before).max() > 1e-3  # the comparison can fail


def test_warm_training_runs_in_process(warm):
    start, data, model_config, _, _ = warm
    config = TrainConfig(num_epochs=1, batch_size=512, use_amp=False, init_from=start.location)
    model, history = fit_in_process(data, model_config, config, initial=warm_model(start, data.extractor.feature_map, 0))
    assert len(history) == 1 and 0.5 < history[0]["val_roc_auc"] <= 1.0
    with pytest.raises(ConfigError, match="init_from: .*v0001: this trainer was given no initial weights"):
        fit_in_process(data, model_config, config)


@pytest.mark.parametrize("path", ["missing-model", "registry-without-it/old"])
def test_a_wrong_source_is_one_line_naming_it(tmp_path, path):
    with pytest.raises(ArtifactError, match=f"^init_from {tmp_path / path}: .*no such model") as info:
        load_warm_start(str(tmp_path / path))
    assert "\n" not in str(info.value)


def test_a_wrong_source_fails_the_cli_before_ray(tmp_path, capsys, published_old):
    from convfm.cli.main import main

    missing = tmp_path / "models" / "nope"
    code = main(["train", "--data", str(published_old.full), "--init-from", str(missing), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"init_from {missing}:" in err, err
    assert not (tmp_path / "r").exists()


def test_vocabulary_extension_keeps_indices_and_admits_only_new_values():
    vocab = Vocabulary(["a", "b"]).extended(["c", "b", "", "c", "d"])
    assert vocab.values == ["a", "b", "c", "d"] and vocab.index("a") == 2 and vocab.index("d") == 5


def test_table_warm_start_keeps_statistics_and_counts_min_freq_in_new_data():
    old = pd.DataFrame({"city": ["x", "x", "y"], "pay": [1.0, 2.0, 3.0], "label": [0, 1, 1]})
    base = TableFeatureExtractor(categorical=["city"], numeric=["pay"], min_freq=2).fit(old)
    new = pd.DataFrame({"city": ["z", "z", "w", "y"], "pay": [100.0, 200.0, 300.0, 1e6], "label": [1, 0, 1, 0]})
    grown = TableFeatureExtractor(**base.get_config()).fit(new, base)
    assert grown.vocabs["city"].values == ["x", "z"]  # x kept (published), z twice; w once and y never admitted
    assert np.array_equal(grown.transform(old).dense, base.transform(old).dense)  # the published scaling kept
    assert np.isfinite(grown.transform(new).dense).all()  # far outside the old range: just a large z-score
    with pytest.raises(ConfigError, match="warm start: table config"):
        TableFeatureExtractor(categorical=["city"], numeric=["pay"]).fit(new, base)


def test_a_field_the_new_data_lacks_is_refused_naming_the_fields():
    jobs = pd.DataFrame({"job_id": ["j1", "j2"], "company": ["acme", "beta"], "location": ["x", "y"]})
    base = JobFeatureExtractor(text_dim=0, history_length=0).fit(jobs)
    with pytest.raises(ConfigError, match=r"warm start: this data gives the fields .* the published model has .*'company'"):
        JobFeatureExtractor(text_dim=0, history_length=0).fit(jobs.drop(columns="company"), base=base)


def test_ray_and_tune_workers_are_never_started_fresh_for_a_warm_start(published_old):
    from train.driver import loop_config  # tune builds its workers' config here too

    with pytest.raises(ConfigError, match="init_from: models/x: this trainer was given no initial weights"):
        loop_config(published_old.old, ModelConfig(), TrainConfig(init_from="models/x"))


def test_resume_keeps_its_starting_model(tmp_path, capsys):
    from convfm.cli.main import main

    assert main(["train", "--resume", str(tmp_path / "run"), "--init-from", "models/x"]) == 2
    assert "--resume: a resumed run keeps its directory, data and starting model" in capsys.readouterr().err


def test_a_warm_start_takes_the_published_extra_columns_and_trains_on_them(extra_board):
    start = load_warm_start(str(extra_board.entry))
    data_config, model_config, notes = warm_configs(start, DataConfig(path=str(extra_board.root)), ModelConfig())
    assert data_config.extra_columns == extra_board.extra  # recorded beside the checkpoints, read at loading
    assert any(n.startswith("data.extra_columns: {} -> ") for n in notes)
    data = prepare_data(data_config, base=start.loaded.extractor)
    assert data.extractor.feature_map == start.loaded.extractor.feature_map
    config = TrainConfig(num_epochs=1, batch_size=256, use_amp=False, init_from=start.location)
    _, history = fit_in_process(data, model_config, config, initial=warm_model(start, data.extractor.feature_map, 0))
    assert np.isfinite(history[-1]["train_loss"]) and history[-1]["val_roc_auc"] > 0.5
