"""The search space and TuneConfig: defaults, the YAML spec language, and bad specs refused before Ray."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from convfm.config import ModelConfig, TrainConfig
from convfm.errors import ConfigError
from tune.config import TuneConfig
from tune.space import DEFAULT_SPACE, SearchSpace

pytestmark = pytest.mark.timeout(60)


def test_default_space_covers_the_seed_table():
    space = SearchSpace.from_overrides({})
    assert set(space.params) == {"embedding_dim", "conv_filters", "conv_kernel_size", "dropout_rate", "hidden_dims",
                                 "learning_rate", "batch_size", "weight_decay", "sparse_embeddings", "embedding_l2",
                                 "early_stopping_metric", "id_dropout", "ema_decay"}
    assert space.params == DEFAULT_SPACE and not space.fixed
    assert (DEFAULT_SPACE["learning_rate"].low, DEFAULT_SPACE["learning_rate"].high) == (1e-4, 1e-2)
    assert set(DEFAULT_SPACE["conv_kernel_size"].values) == {1, 3, 5}
    assert 0.0 in DEFAULT_SPACE["embedding_l2"].values and 0.0 in DEFAULT_SPACE["weight_decay"].values
    assert set(DEFAULT_SPACE["early_stopping_metric"].values) == {"roc_auc", "log_loss"}
    assert {0.0, ModelConfig().id_dropout} <= set(DEFAULT_SPACE["id_dropout"].values)
    assert {0.0, TrainConfig().ema_decay} <= set(DEFAULT_SPACE["ema_decay"].values)  # off, and the default
    space.validate()  # every default value builds a valid ModelConfig / TrainConfig


def test_the_shipped_tune_yaml_lists_the_default_space_entry_for_entry():
    """configs/tune.yaml says its `space:` shows the defaults: a default left out would be searched unseen."""
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "tune.yaml").read_text())["space"]
    assert SearchSpace.from_overrides(shipped).params == DEFAULT_SPACE and set(shipped) == set(DEFAULT_SPACE)


def test_overrides_decode_to_config_fields():
    space = SearchSpace.from_overrides({"hidden_dims": {"type": "choice", "values": [[16], [32, 16]]},
                                        "embedding_dim": {"type": "lograndint", "low": 8, "high": 32},
                                        "weight_decay": 0.0})
    assert space.fixed == {"weight_decay": 0.0}
    sampled = {"hidden_dims": "[32, 16]", "embedding_dim": 11, "conv_filters": 16, "conv_kernel_size": 3,
               "dropout_rate": 0.1, "learning_rate": 1e-3, "batch_size": 256, "sparse_embeddings": True,
               "embedding_l2": 1e-4, "early_stopping_metric": "roc_auc", "id_dropout": 0.25, "ema_decay": 0.9}
    model, train = space.configs(ModelConfig(), TrainConfig(), sampled)
    assert model.hidden_dims == (32, 16) and model.embedding_dim == 11 and model.sparse_embeddings is True
    assert model.id_dropout == 0.25
    assert train.learning_rate == 1e-3 and train.weight_decay == 0.0 and train.batch_size == 256
    assert train.embedding_l2 == 1e-4 and train.early_stopping_metric == "roc_auc" and train.ema_decay == 0.9


def test_a_bad_sample_is_refused_naming_the_field():
    space = SearchSpace.from_overrides({})
    sampled = {"hidden_dims": "[64, 32]", "embedding_dim": 16, "conv_filters": 16, "conv_kernel_size": 4,
               "dropout_rate": 0.1, "learning_rate": 1e-3, "batch_size": 256, "weight_decay": 0.0,
               "sparse_embeddings": False, "embedding_l2": 0.0, "early_stopping_metric": "log_loss",
               "id_dropout": 0.5, "ema_decay": 0.99}
    with pytest.raises(ConfigError, match="conv_kernel_size: must be an odd integer"):
        space.configs(ModelConfig(), TrainConfig(), sampled)


@pytest.mark.parametrize("space, message", [
    ({"embedding_size": 16}, r"space\.embedding_size: unknown parameter 'embedding_size'"),
    ({"num_epochs": 3}, r"space\.num_epochs: unknown parameter 'num_epochs' \(set by tune\.max_t\)"),
    ({"cpus_per_worker": {"type": "choice", "values": [1, 2]}},
     r"space\.cpus_per_worker: unknown parameter 'cpus_per_worker' \(set by tune\.cpus_per_worker\)"),
    ({"placement_strategy": "SPREAD"},
     r"space\.placement_strategy: unknown parameter 'placement_strategy' \(set by train\.placement_strategy\)"),
    ({"learning_rate": {"type": "normal", "low": 1e-4, "high": 1e-2}}, r"space\.learning_rate: unknown type 'normal'"),
    ({"learning_rate": {"type": "loguniform", "low": 1e-2, "high": 1e-4}},
     r"space\.learning_rate: low \(0\.01\) > high \(0\.0001\)"),
    ({"learning_rate": {"type": "loguniform", "low": 0.0, "high": 1e-2}}, r"space\.learning_rate\.low: loguniform needs low > 0"),
    ({"dropout_rate": {"type": "uniform", "low": 0.0, "high": 1.5}},
     r"space\.dropout_rate: uniform value 1\.5 is not valid: dropout_rate: must be a number in \[0, 1\)"),
    ({"conv_kernel_size": {"type": "randint", "low": 1, "high": 5}},
     r"space\.conv_kernel_size: randint value 2 is not valid: conv_kernel_size: must be an odd integer"),
    ({"embedding_dim": {"type": "uniform", "low": 16, "high": 128}},
     r"space\.embedding_dim: uniform value 16\.0 is not valid: embedding_dim: must be an integer"),
    ({"batch_size": {"type": "choice", "values": [256, 0]}}, r"space\.batch_size: choice value 0 is not valid"),
    ({"hidden_dims": {"type": "choice", "values": []}}, r"space\.hidden_dims: choice needs a non-empty list"),
    ({"learning_rate": {"type": "loguniform", "low": 1e-4, "hgh": 1e-2}}, r"space\.learning_rate: unknown key\(s\) \['hgh'\]"),
])
def test_invalid_space_yaml_fails_before_any_trial(tmp_path, capsys, tune_yaml, tiny_space, space, message):
    from convfm.cli.main import main

    config = tune_yaml(tmp_path / "bad.yaml", tmp_path / "models", space={**tiny_space, **space})
    out_dir = tmp_path / "out"
    assert main(["tune", "--config", str(config), "--data", str(tmp_path), "--out", str(out_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert re.match(rf"convfm tune: error: {re.escape(str(config))} \[space\] line \d+: ", error) and "\n" not in error
    assert re.search(message, error), error
    assert not out_dir.exists()  # refused before the experiment directory, the data or Ray


def test_invalid_space_never_starts_ray(tmp_path, tune_yaml):
    config = tune_yaml(tmp_path / "bad.yaml", tmp_path / "models",
                          space={"dropout_rate": {"type": "uniform", "low": 0.6, "high": 0.2}})
    code = textwrap.dedent(f"""
        import sys
        from convfm.cli.main import main
        code = main(["tune", "--config", {str(config)!r}, "--out", {str(tmp_path / 'out')!r}])
        ray = sys.modules.get("ray")
        print("ray started:", bool(ray and ray.is_initialized()))
        sys.exit(code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ray started: False" in result.stdout
    assert "space.dropout_rate: low (0.6) > high (0.2)" in result.stderr


@pytest.mark.parametrize("field, value, message", [
    ("search_alg", "grid", r"search_alg: must be one of \['random', 'optuna', 'hyperopt'\]"),
    ("grace_period", 5, r"grace_period: must be an integer in \[1, max_t=4\]"),
    ("reduction_factor", 1, r"reduction_factor: must be a number in \(1, 100\]"),
    ("metric", "roc_auc", r"metric: must be a validation metric"),
    ("metric", "val_auc", r"metric: must be a validation metric each epoch reports: val_loss, val_log_loss, "
                          r"val_roc_auc, .*, got 'val_auc'$"),
    ("metric", "val_ndcg@x", r"metric: must be a validation metric .*, got 'val_ndcg@x'$"),
    ("mode", "max", r"mode: must be 'min' for val_log_loss \(lower is better\), got 'max'$"),
    ("seed", -1, r"seed: must be an integer >= 0, got -1$"),
    ("name", "my model", r"name: use letters, digits"),
    ("cpus_per_worker", 0, r"cpus_per_worker: must be a number in \(0, 256\]"),
    ("num_samples", True, r"num_samples: must be an integer in \[1, 10000\], got True"),
    ("reduction_factor", True, r"reduction_factor: must be a number in \(1, 100\], got True"),
])
def test_tune_config_names_the_bad_field(field, value, message):
    extra = {"metric": "val_log_loss"} if field == "mode" else {}
    with pytest.raises(ConfigError, match=message):
        TuneConfig.from_dict({"max_t": 4, **extra, field: value})


def test_tune_metric_is_one_the_trainer_reports():
    """A typo (val_auc) failed in Ray Tune only once the first trial reported, with a traceback."""
    for metric, mode in (("val_loss", "min"), ("val_f1", "max"), ("val_mrr", "max"), ("val_hr@10", "max")):
        TuneConfig(metric=metric, mode=mode).trial_base(ModelConfig(), TrainConfig())
    with pytest.raises(ConfigError, match=r"^metric: each epoch reports ranking metrics at train.ranking_k=10, "
                                          r"got 'val_ndcg@5'$"):
        TuneConfig(metric="val_ndcg@5").trial_base(ModelConfig(), TrainConfig())


def test_sparse_embeddings_with_multi_gpu_trials_is_refused():
    config = TuneConfig(use_gpu=True, workers_per_trial=2)
    with pytest.raises(ConfigError, match="space.sparse_embeddings: DDP cannot all-reduce sparse gradients"):
        config.trial_base(ModelConfig(), TrainConfig())
    fixed = TuneConfig(use_gpu=True, workers_per_trial=2, space={"sparse_embeddings": False})
    model, train = fixed.trial_base(ModelConfig(), TrainConfig())
    assert train.num_workers == 2 and train.use_gpu and model.sparse_embeddings is False


def test_trials_run_with_tunes_cpus_per_worker_and_record_it():
    """tune.cpus_per_worker is what each trial's workers reserve; the trial's TrainConfig (run by the workers,
    saved in checkpoints and experiment.json) carries it instead of train.cpus_per_worker."""
    config = TuneConfig(cpus_per_worker=0.5, space={"batch_size": 256})
    model, base = config.trial_base(ModelConfig(), TrainConfig(cpus_per_worker=3.0, placement_strategy="SPREAD"))
    assert base.cpus_per_worker == 0.5 and base.placement_strategy == "SPREAD"
    sampled = {"hidden_dims": "[64, 32]", "embedding_dim": 16, "conv_filters": 16, "conv_kernel_size": 3,
               "dropout_rate": 0.1, "learning_rate": 1e-3, "weight_decay": 0.0, "sparse_embeddings": False,
               "embedding_l2": 0.0, "early_stopping_metric": "log_loss", "id_dropout": 0.5, "ema_decay": 0.99}
    _, trial = config.search_space().configs(model, base, sampled)
    assert trial.cpus_per_worker == 0.5 and trial.batch_size == 256


def test_tune_yaml_errors_name_the_section_line_and_key(tmp_path):
    from convfm.cli.tune import load_tune_config

    path = tmp_path / "tune.yaml"
    tune = "tune:\n  num_samples: 2\n  max_concurrent: {}\n"
    space = "space:\n  dropout_rate: 0.1\n  learning_rate:\n    type: loguniform\n    low: {}\n    high: 0.01\n"
    path.write_text(tune.format("yes") + space.format(1e-4))
    with pytest.raises(ConfigError, match=r"tune\.yaml \[tune\] line 3: max_concurrent: must be an integer in "
                                          r"\[1, 1024\], got True"):
        load_tune_config(str(path))
    path.write_text(tune.format(2) + space.format(0.0))
    with pytest.raises(ConfigError, match=r"tune\.yaml \[space\] line 8: space\.learning_rate\.low: loguniform "
                                          r"needs low > 0"):
        load_tune_config(str(path))
    path.write_text(tune.format(2) + "  space: {}\n" + space.format(1e-4))
    with pytest.raises(ConfigError, match=r"tune\.yaml \[tune\] line 4: space: give the search space once"):
        load_tune_config(str(path))
    path.write_text(tune.format(2) + space.format(1e-4))
    assert load_tune_config(str(path)).search_space().params["learning_rate"].low == 1e-4
