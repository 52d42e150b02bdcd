"""What a Ray Train run checks before Ray starts, shared by ``train.driver`` and ``tune`` (Ray-free, so
validating a config never loads Ray)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from convfm.config import TrainConfig
from convfm.errors import ConfigError
from convfm.data.prepare import PreparedData

log = logging.getLogger(__name__)


def check_sparse_gradients(sparse: bool, use_gpu: bool, num_workers: int, *, field: str = "sparse_embeddings",
                           workers_field: str = "num_workers") -> None:
    """Refuse sparse embedding gradients on several GPU workers: DDP all-reduces them over NCCL, which has no
    sparse all-reduce (gloo, on CPU workers, has one). ``sparse``: whether the run (or any trial) may use them."""
    if sparse and use_gpu and num_workers > 1:
        raise ConfigError(f"{field}: DDP cannot all-reduce sparse gradients over NCCL (GPU workers); set "
                          f"sparse_embeddings: false for use_gpu with {workers_field} > 1, or use CPU workers (gloo)")


def check_workers_fit(config: TrainConfig, resources: Mapping[str, float], may_autoscale: bool) -> None:
    """Refuse a worker group larger than the local Ray's CPUs or GPUs: Ray Train would wait for them forever,
    silently (``convfm train --gpu`` on a machine without a GPU hung). ``resources``: ``ray.cluster_resources()``.
    ``may_autoscale`` (a joined cluster): nodes may still come, so there it is a warning."""
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    need_cpus = config.num_workers * config.cpus_per_worker
    few_cpus, few_gpus = need_cpus > cpus + 1e-6, config.use_gpu and config.num_workers > gpus + 1e-6
    short = [f"{need_cpus:g} CPU (num_workers {config.num_workers} x cpus_per_worker {config.cpus_per_worker:g}) "
             f"but it has {cpus:g}"] if few_cpus else []
    short += [f"{config.num_workers} GPU(s) (use_gpu: one per worker) but it has {gpus:g}"] if few_gpus else []
    if not short:
        return
    if may_autoscale:
        log.warning("the cluster cannot place the workers now (they need %s); waiting for the autoscaler to add "
                    "nodes", "; ".join(short))
        return
    field, fix = (("use_gpu", "drop --gpu (train.use_gpu), or join a cluster with GPU nodes (--address)") if few_gpus
                  else ("num_workers", "lower --workers or --cpus-per-worker"))
    raise ConfigError(f"{field}: the workers need {'; '.join(short)} on this machine's Ray: {fix}")


def check_unchanged(out_dir: str | Path, saved: Mapping[str, Any], current: Mapping[str, Mapping[str, Any]],
                    owner: str, keeps: str) -> None:
    """``--resume``: refuse when a field of ``current`` (section -> config dict) differs from the same section
    of ``saved`` (run.json, experiment.json), naming the fields. ``path`` may differ: the same data, moved."""
    for section, fields in current.items():
        before = saved.get(section, {})
        changed = sorted(k for k, v in fields.items() if k != "path" and before.get(k) != v)
        if changed:
            raise ConfigError(f"--resume {out_dir}: {section} field(s) {changed} differ from the {owner}'s; {keeps}")


def check_training_data(data: PreparedData, config: TrainConfig, workers_field: str = "num_workers") -> None:
    """Enough training examples for the workers, and both classes in validation (else AUC is undefined)."""
    labels = data.sets["valid"].labels
    counts = dict(zip(*np.unique(labels, return_counts=True)))
    check_split_sizes(len(data.sets["train"]), counts, config, workers_field)


def check_split_sizes(train_rows: int, valid_labels: Mapping[float, int], config: TrainConfig,
                      workers_field: str = "num_workers") -> None:
    """``check_training_data`` from counts: training rows, and validation rows per label (data prepared on the
    cluster is never in the driver)."""
    if train_rows < config.num_workers:
        raise ConfigError(f"{workers_field}: {config.num_workers} workers but only {train_rows} training examples")
    present = [label for label, count in valid_labels.items() if count > 0]
    if len(present) < 2:
        which = {1.0: ", all positive", 0.0: ", all negative"}.get(float(present[0]), "") if present else ""
        raise ConfigError("valid_fraction: the validation split needs positive and negative examples "
                          f"(has {sum(valid_labels.values())} example(s){which}); raise data.valid_fraction, "
                          "give the valid file of a train/valid/test directory both classes, or add data")
