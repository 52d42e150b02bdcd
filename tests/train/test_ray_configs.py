"""train.driver and tune.runner build their TorchTrainer in one place (train.ray_configs): the same TrainConfig
gives a training run and a multi-worker tune trial the same workers, resources and checkpoint policy; a
1-worker trial trains in its Tune actor with the same checkpoint policy."""
from __future__ import annotations

import types
from typing import Any

import pytest
import ray.train

pytestmark = pytest.mark.timeout(240)


class Built(Exception):
    """Raised by the recording trainer's fit(): the configs are built, nothing needs to run."""


class RecordingTrainer:
    """Takes ConvFMTrainer's place: records what a path built, then stops that path at fit()."""

    def __init__(self, built: list[tuple[Any, dict[str, Any]]]) -> None:
        self.built = built

    def __call__(self, train_loop_per_worker: Any, **configs: Any) -> "RecordingTrainer":
        self.built.append((train_loop_per_worker, configs))
        return self

    def fit(self) -> None:
        raise Built


class TrialReports(ray.train.UserCallback):
    """Takes TuneReportCallback's place in a trial run outside Tune (RunConfig accepts only Train callbacks)."""


def test_train_and_tune_build_the_same_ray_configs(ray_local, make_configs, tmp_path, monkeypatch):
    import train.ray_configs as ray_configs
    import tune.runner as runner
    from train.driver import run_training
    from train.loop import train_loop_per_worker
    from tune.space import DEFAULT_SPACE, MODEL_FIELDS, SearchSpace

    data_config, model_config, train_config = make_configs(
        num_workers=2, cpus_per_worker=0.5, placement_strategy="SPREAD", keep_checkpoints=3, max_failures=2)
    built: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(ray_configs, "ConvFMTrainer", RecordingTrainer(built))

    with pytest.raises(Built):
        run_training(data_config, model_config, train_config, tmp_path / "run")

    # A trial whose space fixes every field at the base configs' values runs with exactly train_config.
    fixed = {name: getattr(model_config if name in MODEL_FIELDS else train_config, name) for name in DEFAULT_SPACE}
    setup = {"model": model_config.to_dict(), "train": train_config.to_dict(),
             "space": SearchSpace.from_overrides(fixed).to_dict(), "storage": str(tmp_path / "tune" / "train"),
             "metric": train_config.early_stopping[0], "mode": train_config.early_stopping[1],  # as the run's
             "in_trial": False}  # 2 workers per trial
    monkeypatch.setattr(runner.ray_tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(runner, "TuneReportCallback", TrialReports)  # the real one needs a Tune session
    with pytest.raises(Built):
        runner.run_trial({}, shared={}, setup=setup)

    (train_loop, run), (trial_loop, trial) = built
    assert train_loop is trial_loop is train_loop_per_worker
    assert trial["train_loop_config"]["train"] == run["train_loop_config"]["train"] == train_config.to_dict()
    scaling = run["scaling_config"]
    assert scaling == trial["scaling_config"]
    assert (scaling.num_workers, scaling.resources_per_worker, scaling.placement_strategy) == (2, {"CPU": 0.5},
                                                                                                "SPREAD")
    checkpoints = run["run_config"].checkpoint_config
    assert checkpoints == trial["run_config"].checkpoint_config
    assert (checkpoints.num_to_keep, checkpoints.checkpoint_score_attribute, checkpoints.checkpoint_score_order) == (
        3, "val_log_loss", "min")  # a run keeps its early-stopping metric's best epochs (log loss by default)
    # by design: a run restarts its workers itself; a trial leaves retries to Tune (tune.max_failures)
    assert run["run_config"].failure_config.max_failures == 2
    assert trial["run_config"].failure_config.max_failures == 0
    assert (run["run_config"].name, trial["run_config"].name) == ("run", "train-t1")
    assert [type(callback) for callback in trial["run_config"].callbacks] == [TrialReports]


def test_a_one_worker_trial_trains_in_its_actor_with_the_runs_checkpoint_policy(ray_local, make_configs, tmp_path,
                                                                                monkeypatch):
    """No TorchTrainer for a 1-worker trial: the loop runs in the trial's actor (train.loop.train_in_trial), which
    Tune gives the worker's CPUs, and Tune keeps its checkpoints as a run with the same TrainConfig keeps its own."""
    import ray.tune

    import tune.runner as runner
    from train.ray_configs import checkpoint_policy
    from tune.space import DEFAULT_SPACE, MODEL_FIELDS, SearchSpace

    data_config, model_config, train_config = make_configs(num_workers=1, keep_checkpoints=2)
    tuners: list[tuple[Any, dict[str, Any]]] = []

    class RecordingTuner:
        def __init__(self, trainable: Any, **configs: Any) -> None:
            tuners.append((trainable, configs))

        def fit(self) -> None:
            raise Built

    monkeypatch.setattr(ray.tune, "Tuner", RecordingTuner)
    tune_config = {"num_samples": 1, "max_t": 2, "metric": "val_log_loss", "mode": "min",
                   "cpus_per_worker": 0.5, "space": {"learning_rate": 0.01}}
    with pytest.raises(Built):
        runner.run_tune(data_config, model_config, train_config, tune_config, tmp_path / "tune")
    ((trainable, configs),) = tuners
    assert trainable._resources.required_resources == {"CPU": 0.51}  # the worker's 0.5 + the driver's sliver
    assert vars(configs["run_config"].checkpoint_config) == vars(ray.tune.CheckpointConfig(
        **checkpoint_policy(train_config, "val_log_loss", "min")))
    assert configs["run_config"].checkpoint_config.num_to_keep == 2

    fixed = {name: getattr(model_config if name in MODEL_FIELDS else train_config, name) for name in DEFAULT_SPACE}
    setup = {"model": model_config.to_dict(), "train": train_config.to_dict(),
             "space": SearchSpace.from_overrides(fixed).to_dict(), "storage": str(tmp_path / "train"),
             "metric": "val_log_loss", "mode": "min", "in_trial": True}
    in_actor: list[dict[str, Any]] = []
    monkeypatch.setattr(runner.ray_tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(runner, "train_in_trial", in_actor.append)
    monkeypatch.setattr(runner, "build_trainer", None)  # calling it would fail the test
    runner.run_trial({}, shared={"feature_map": "shared"}, setup=setup)
    assert in_actor == [{"feature_map": "shared", "model": model_config.to_dict(), "train": train_config.to_dict()}]


def test_the_trainer_starts_no_dataset_manager_without_datasets(make_configs, tmp_path):
    """Ray 2.60 adds a DatasetsCallback (it starts a DatasetManager actor) to every TorchTrainer; ConvFMTrainer
    keeps every default callback but that one, and keeps it when the run streams Ray Data datasets."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    from train.ray_configs import build_trainer

    config = make_configs(num_workers=1)[2]

    def kinds(trainer) -> list[type]:
        return [type(callback) for callback in trainer._create_default_callbacks()]

    plain = build_trainer({}, config, name="plain", storage_path=str(tmp_path))
    ray_default = kinds(super(type(plain), plain))  # what TorchTrainer itself would start
    assert DatasetsCallback in ray_default
    assert kinds(plain) == [kind for kind in ray_default if kind is not DatasetsCallback]
    assert isinstance(plain, TorchTrainer)
    streamed = build_trainer({}, config, name="streamed", storage_path=str(tmp_path),
                             datasets={"train": lambda: None})
    assert kinds(streamed) == kinds(super(type(streamed), streamed)) == ray_default


def test_workers_the_local_ray_cannot_place_fail_before_the_run_starts(ray_local, make_configs, tmp_path):
    """`convfm train --gpu` on a machine without a GPU waited forever for it; now it names what is missing."""
    from convfm.errors import ConfigError
    from train.driver import run_training

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine's Ray has a GPU")
    with pytest.raises(ConfigError, match=r"^use_gpu: the workers need 1 GPU\(s\) \(use_gpu: one per worker\) but "
                                          r"it has 0 on this machine's Ray: drop --gpu"):
        run_training(*make_configs(num_workers=1, use_gpu=True), str(tmp_path / "gpu"))
    with pytest.raises(ConfigError, match=r"^num_workers: the workers need 3 CPU \(num_workers 3 x cpus_per_worker "
                                          r"1\) but it has 2 on this machine's Ray: lower --workers"):
        run_training(*make_configs(num_workers=3), str(tmp_path / "cpu"))
