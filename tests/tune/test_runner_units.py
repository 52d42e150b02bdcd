"""Parts of the runner that need no running Ray: seeded suggestions, trial concurrency, trial outcomes."""
from __future__ import annotations

import pytest

from convfm.errors import ConfigError
from tune.config import TuneConfig
from tune.results import ASHA, COMPLETED, ERROR, PATIENCE, trial_history, trial_row
from search_preview import suggest_configs
from tune.runner import search_progress, trial_concurrency

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("search_alg", ["random", "optuna", "hyperopt"])
def test_same_seed_suggests_the_same_configs(search_alg, tiny_tune, tiny_space):
    config = TuneConfig.from_dict({**tiny_tune, "search_alg": search_alg, "space": tiny_space})
    first, again = suggest_configs(config, 6), suggest_configs(config, 6)
    assert first == again
    other = suggest_configs(TuneConfig.from_dict({**config.to_dict(), "seed": 99}), 6)
    assert other != first
    assert {c["hidden_dims"] == [16] or c["hidden_dims"] == [32, 16] for c in first} == {True}  # lists again


def test_default_space_suggestions_are_valid_configs():
    from convfm.config import ModelConfig, TrainConfig

    config = TuneConfig()
    space = config.search_space()
    for values in suggest_configs(config, 8):
        space.apply(ModelConfig(), TrainConfig(), values)  # raises on an invalid sample


def test_concurrency_fits_workers_into_the_cluster():
    two_cpus = {"CPU": 2.0}
    assert trial_concurrency(TuneConfig(max_concurrent=4), two_cpus) == 2  # 2 x (0.99 + 0.01)
    assert trial_concurrency(TuneConfig(max_concurrent=4, workers_per_trial=2), two_cpus) == 1
    assert trial_concurrency(TuneConfig(max_concurrent=1), two_cpus) == 1
    with pytest.raises(ConfigError, match=r"workers_per_trial: one trial needs 2\.98 CPU"):
        trial_concurrency(TuneConfig(workers_per_trial=3), two_cpus)
    gpus = TuneConfig(max_concurrent=8, use_gpu=True, workers_per_trial=2, space={"sparse_embeddings": False})
    assert trial_concurrency(gpus, {"CPU": 16.0, "GPU": 4.0}) == 2
    with pytest.raises(ConfigError, match="and 2 GPU"):
        trial_concurrency(gpus, {"CPU": 16.0})


def test_a_trial_reserves_its_workers_cpus_in_its_actor_only_when_it_trains_there():
    """A 1-worker trial trains in its Tune actor, which holds the worker's CPUs (and GPU); a multi-worker
    trial's actor holds the driver's sliver, its TorchTrainer places the workers. Both hold what
    trial_concurrency counts per trial."""
    one, two = TuneConfig(), TuneConfig(workers_per_trial=2, cpus_per_worker=0.5)
    assert one.trains_in_trial and not two.trains_in_trial
    assert one.trial_resources() == {"cpu": 1.0, "gpu": 0}
    assert two.trial_resources() == {"cpu": 0.01, "gpu": 0}
    gpu = TuneConfig(use_gpu=True, cpus_per_worker=3.99, space={"sparse_embeddings": False})
    assert gpu.trial_resources() == {"cpu": 4.0, "gpu": 1}
    assert trial_concurrency(gpu, {"CPU": 8.0, "GPU": 4.0}) == 2 == trial_concurrency(one, {"CPU": 2.0})


def test_trial_outcomes():
    def history(aucs, stop_last=0):
        return [{"epoch": i, "val_roc_auc": a, "stop": int(stop_last and i == len(aucs) - 1)}
                for i, a in enumerate(aucs)]

    full = trial_row("a", {"learning_rate": 0.01}, history([0.6, 0.7, 0.65, 0.68]), None, "val_roc_auc", "max", 4)
    assert (full["ended"], full["epochs"], full["best_val_roc_auc"], full["best_epoch"]) == (COMPLETED, 4, 0.7, 2)
    asha = trial_row("b", {}, history([0.5]), None, "val_roc_auc", "max", 4)
    assert asha["ended"] == ASHA and asha["stopped_by_asha"] and asha["epochs"] == 1
    patience = trial_row("c", {}, history([0.6, 0.6], stop_last=1), None, "val_roc_auc", "max", 4)
    assert patience["ended"] == PATIENCE and not patience["stopped_by_asha"]
    failed = trial_row("d", {}, [], "Traceback...\n  ...\nConfigError: trial d: bad\n", "val_roc_auc", "max", 4)
    assert failed["ended"] == ERROR and failed["error"] == "ConfigError: trial d: bad" and failed["epochs"] == 0


def test_only_trials_a_resume_skips_count_as_finished():
    """On Ctrl-C Tune saves the running trials as RUNNING, then marks them TERMINATED in memory: counted from
    memory, "2 of 4 trial(s) finished" named 2 trials the resume trained again. The saved statuses count."""
    assert search_progress(["TERMINATED", "RUNNING", "RUNNING", "PENDING"], 4) == (1, False)
    assert search_progress(["RUNNING", "RUNNING"], 4) == (0, False)  # 2 trials not sampled yet
    assert search_progress(["TERMINATED", "ERROR", "PAUSED", "TERMINATED"], 4) == (2, False)
    assert search_progress(["TERMINATED", "ERROR", "TERMINATED", "TERMINATED"], 4) == (3, True)  # ERROR: ended
    assert search_progress([], 4) == (0, False)


def test_concurrency_on_a_cluster_that_scales_up_from_zero():
    config = TuneConfig(max_concurrent=3, use_gpu=True)
    assert trial_concurrency(config, {"CPU": 4.0, "GPU": 0.0}, may_autoscale=True) == 3
    with pytest.raises(ConfigError, match="cluster has 4 CPU and 0 GPU"):
        trial_concurrency(config, {"CPU": 4.0, "GPU": 0.0})


def test_trial_history_keeps_a_retried_epochs_last_record(tmp_path):
    """progress.csv is appended to across a trial's retries: an epoch reported twice counts once, as retried."""
    (tmp_path / "progress.csv").write_text("epoch,val_roc_auc,stop\n0,0.6,0\n1,0.62,0\n1,0.7,0\n2,,0\n")
    history = trial_history(tmp_path)
    assert [(r["epoch"], r.get("val_roc_auc")) for r in history] == [(0, 0.6), (1, 0.7), (2, None)]
    row = trial_row("t", {}, history, None, "val_roc_auc", "max", 3)
    assert (row["epochs"], row["best_epoch"], row["ended"]) == (3, 2, COMPLETED)
    assert trial_history(tmp_path / "never-reported") == []
