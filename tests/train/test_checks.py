"""train.checks and the driver's other start-up checks (Ray-free): what train and tune refuse before any Ray
work, naming the field."""
from __future__ import annotations

import logging

import pytest

from convfm.config import DataConfig, ModelConfig, TrainConfig
from convfm.errors import ConfigError
from train.checks import check_sparse_gradients, check_split_sizes, check_unchanged, check_workers_fit


def test_sparse_gradients_are_refused_only_on_several_gpu_workers():
    with pytest.raises(ConfigError, match=r"^sparse_embeddings: DDP cannot all-reduce sparse gradients over NCCL"):
        check_sparse_gradients(True, use_gpu=True, num_workers=2)
    with pytest.raises(ConfigError, match=r"^space\.sparse_embeddings: .* with workers_per_trial > 1"):
        check_sparse_gradients(True, True, 2, field="space.sparse_embeddings", workers_field="workers_per_trial")
    for sparse, use_gpu, workers in [(True, False, 2), (True, True, 1), (False, True, 4)]:
        check_sparse_gradients(sparse, use_gpu, workers)


def test_a_resume_with_changed_fields_names_them_and_lets_the_data_move():
    saved = {"model": ModelConfig().to_dict(), "data": DataConfig(path="old/market").to_dict()}
    check_unchanged("runs/a", saved, {"model": ModelConfig().to_dict(),
                                      "data": DataConfig(path="new/market").to_dict()}, "run", "keeps them")
    changed = {"model": ModelConfig(embedding_dim=8, conv_filters=8).to_dict(), "data": saved["data"]}
    with pytest.raises(ConfigError, match=r"^--resume runs/a: model field\(s\) \['conv_filters', 'embedding_dim'\] "
                                          r"differ from the run's; keeps them$"):
        check_unchanged("runs/a", saved, changed, "run", "keeps them")
    with pytest.raises(ConfigError, match=r"tune field\(s\) \['seed'\] differ from the experiment's"):
        check_unchanged("out", {}, {"tune": {"seed": 1}}, "experiment", "a resumed search keeps its configs")


def test_distributed_preparation_refuses_workers_that_leave_no_cpu_for_ray_data(monkeypatch):
    """Streaming workers that hold every CPU would wait forever for Ray Data tasks that cannot be scheduled."""
    from train import driver

    monkeypatch.setattr(driver.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ConfigError,
                       match=r"cpus_per_worker: 2 worker\(s\) x 1(\.0)? CPU take 2 of the cluster's 2 CPUs"):
        driver._check_room_for_data(TrainConfig(num_workers=2, cpus_per_worker=1.0))
    driver._check_room_for_data(TrainConfig(num_workers=2, cpus_per_worker=0.5))  # one CPU left: fine


def test_workers_beyond_a_local_rays_cpus_or_gpus_are_refused_and_only_warned_of_on_a_cluster(caplog):
    two_cpus = {"CPU": 2.0}
    check_workers_fit(TrainConfig(num_workers=2), two_cpus, may_autoscale=False)
    check_workers_fit(TrainConfig(num_workers=2, use_gpu=True), {"CPU": 4.0, "GPU": 2.0}, may_autoscale=False)
    with pytest.raises(ConfigError, match=r"^num_workers: the workers need 3 CPU \(num_workers 3 x cpus_per_worker "
                                          r"1\) but it has 2 on this machine's Ray: lower --workers"):
        check_workers_fit(TrainConfig(num_workers=3), two_cpus, may_autoscale=False)
    with pytest.raises(ConfigError, match=r"^use_gpu: the workers need 2 GPU\(s\) \(use_gpu: one per worker\) but it "
                                          r"has 1 on this machine's Ray: drop --gpu"):
        check_workers_fit(TrainConfig(num_workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, may_autoscale=False)
    with pytest.raises(ConfigError, match=r"need 4 CPU .*; 2 GPU\(s\) .* has 0 .*: drop --gpu"):
        check_workers_fit(TrainConfig(num_workers=2, cpus_per_worker=2, use_gpu=True), two_cpus, may_autoscale=False)
    with caplog.at_level(logging.WARNING, logger="train.checks"):
        check_workers_fit(TrainConfig(num_workers=2, use_gpu=True), two_cpus, may_autoscale=True)
    assert "waiting for the autoscaler" in caplog.text and "2 GPU(s)" in caplog.text


def test_a_validation_split_of_one_class_says_which_and_what_to_do():
    with pytest.raises(ConfigError, match=r"needs positive and negative examples \(has 4 example\(s\), all "
                                          r"positive\); raise data.valid_fraction, give the valid file"):
        check_split_sizes(100, {1.0: 4, 0.0: 0}, TrainConfig())
    with pytest.raises(ConfigError, match=r"\(has 0 example\(s\)\)"):
        check_split_sizes(100, {}, TrainConfig())
    check_split_sizes(100, {1.0: 4, 0.0: 1}, TrainConfig())
