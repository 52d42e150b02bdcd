"""Driver of a Ray Train run: validate, prepare data once, start (or join) Ray, fit, write the run directory.

Order matters: configs, the run directory and the data are all checked before Ray starts, so a bad field
fails in a second with a message naming it, not after a cluster spins up. The extractor is fitted once,
here, on the training split; workers receive their shard of the examples and (rank 0) the validation
bundle through the object store, never the whole dataset. With ``prepare="distributed"`` (a table too large for
the driver) the fit runs on Ray Data and the workers stream their shards (``train.prepare_distributed``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import ray
import ray.train
import torch
from ray.train import Result

from convfm.store import storage
from convfm.config import DataConfig, ModelConfig, TrainConfig, as_config
from convfm.errors import ConfigError, ConvFMError
from convfm.features.jobs import load_extractor
from convfm.data.prepare import PreparedData, data_reads, first_reads, prepare_data
from convfm.training.in_process import check_initial_weights, check_resumable_metric
from convfm.training.warm_start import load_warm_start, warm_configs, warm_model
from convfm.store.storage import StagedDir
from convfm.store.artifacts import MANIFEST
from convfm.data.partitioned import check_schemas, choose_preparation, split_files
from convfm.data.splitting import describe_periods
from convfm.features.extra_fields import describe_summary
from train.checks import (check_sparse_gradients, check_split_sizes, check_training_data, check_unchanged,
                          check_workers_fit)
from train.cluster import init_ray, joined_cluster
from train.loop import MODEL_DIR, TRAIN_STATE
from train.prepare_distributed import DistributedData, prepare_distributed
from train.prepare_market import check_market, prepare_market_distributed
from train.progress import EpochCallback, ProgressCallback, progress_queue, relay_progress
from train.outputs import RUN_FILE, export_model, plot_curves, read_run, write_metrics_csv, write_run
from train.ray_configs import build_trainer

log = logging.getLogger(__name__)


class TrainingError(ConvFMError):
    """Ray Train gave up on the run (a worker kept failing, or max_failures was reached)."""


@dataclasses.dataclass
class TrainingResult:
    out_dir: str | Path  # the run directory: a local path or the storage URI the outputs were uploaded to
    best_dir: str | Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    stopped_early: bool
    wall_seconds: float
    restarts: list[int]  # epochs at which a worker group started from a checkpoint (failures, --resume)
    split_periods: Optional[dict[str, Any]] = None  # split "global_time": where valid and test start, examples
    columns_read: Optional[dict[str, Any]] = None  # data.extra_columns: what the fitted catalogs hold of each
    live_catalog: Optional[dict[str, Any]] = None  # data.events: the live catalog applied to the jobs table

    @property
    def validation_metrics(self) -> dict[str, Any]:
        """The best epoch's validation metrics without the ``val_`` prefix (accuracy, ..., roc_auc)."""
        return {k[4:]: v for k, v in self.best_metrics.items() if k.startswith("val_")}


def run_training(
    data_config: DataConfig | Mapping[str, Any],
    model_config: ModelConfig | Mapping[str, Any],
    train_config: TrainConfig | Mapping[str, Any],
    out_dir: str | Path,
    address: Optional[str] = None,
    resume: bool = False,
    storage_path: Optional[str] = None,
    *,
    on_epoch: Optional[EpochCallback] = None,
    loop_options: Optional[Mapping[str, Any]] = None,
    extractor_options: Optional[Mapping[str, Any]] = None,
    prepared: Optional[PreparedData] = None,
    quiet: bool = True,
    prepare: str = "memory",
    sigterm_interrupts: bool = False,
) -> TrainingResult:
    """Train with ``TorchTrainer`` and write ``out_dir`` (best/, metrics.csv, curves.png, run.json): a local
    directory or a storage URI (``s3://...``, ``gs://...``; staged locally and uploaded, see ``train.outputs``).

    Configs may be config objects or plain mappings (validated here, before Ray). ``resume`` continues the
    run in ``out_dir`` from its latest checkpoint: its data and model configs must match, the train config
    may differ (more epochs, more workers). ``storage_path`` is where Ray Train keeps checkpoints (default
    ``out_dir/ray``, a URI when ``out_dir`` is one; on a multi-node cluster a shared path or URI).
    ``on_epoch`` gets rank 0's metrics of each epoch as it is reported. ``loop_options`` adds keys to the
    worker config (``crash_at_epoch``...).
    ``extractor_options`` go to the extractor fitted for a new run (a resumed run reuses its own);
    ``prepared`` is data the caller already prepared from ``data_config``. ``quiet`` keeps worker and
    controller logs off the terminal when this call starts Ray.
    ``train_config.init_from`` starts from a published model (``convfm.training.warm_start``): its model config
    and extractor fields replace the run's (logged, and recorded in run.json), its version is pinned in the
    recorded train config, and its grown weights reach the workers through the object store.
    ``prepare``: "memory" (``prepare_data`` here, shards through the object store), "distributed" (a table
    fitted and encoded on Ray Data, ``train.prepare_distributed``; the workers stream their shards) or "auto"
    (``choose_preparation``). ``sigterm_interrupts`` (the CLI): a SIGTERM to this process interrupts the run as
    Ctrl-C does (``init_ray``), leaving it to ``resume``.
    """
    started = time.perf_counter()
    data_config = as_config(data_config, DataConfig, "data")
    model_config = as_config(model_config, ModelConfig, "model")
    train_config = as_config(train_config, TrainConfig, "train")
    warm = load_warm_start(train_config.init_from) if train_config.init_from else None
    if warm is not None:
        data_config, model_config, notes = warm_configs(warm, data_config, model_config)
        for note in notes:
            log.warning("warm start from %s: %s (the published model's)", warm.location, note)
        train_config = dataclasses.replace(train_config, init_from=warm.location)
    check_sparse_gradients(model_config.sparse_embeddings, train_config.use_gpu, train_config.num_workers)
    prepare, why = choose_preparation(data_config, prepare)
    log.info("preparing data %s: %s", "on the cluster" if prepare == "distributed" else "in memory", why)
    if prepare == "distributed":
        if prepared is not None:
            raise ConfigError("prepared: data prepared in memory cannot run on the distributed path")
        if data_config.kind == "jobs":
            check_market(data_config)  # before Ray starts
        else:
            check_schemas(split_files(data_config), data_config)
    if not resume:
        _check_new_run_dir(out_dir)
    with StagedDir(out_dir) as out:  # a URI run directory: written here, uploaded as it goes
        run = _run_identity(out, resume, data_config, model_config, storage_path)
        over = False  # a resumed run whose training is over: only its export is left
        base = None if warm is None else warm.loaded.extractor
        if prepare == "distributed":
            init_ray(address, quiet, sigterm_interrupts=sigterm_interrupts)
            check_workers_fit(train_config, ray.cluster_resources(), joined_cluster(address))
            _check_room_for_data(train_config)
            prepare_on_cluster = prepare_market_distributed if data_config.kind == "jobs" else prepare_distributed
            extractor, over = _check_resumable(run, train_config) if resume else (None, False)
            data = prepare_on_cluster(data_config, extractor_options, base, extractor=extractor)
            check_split_sizes(data.train_rows, data.valid_labels, train_config)
        elif resume:
            extractor, over = _check_resumable(run, train_config)
            data = prepare_data(data_config, extractor=extractor, base=None if extractor is not None else base,
                                read_before=first_reads(run, data_config, f"run {out.target}"))  # the same data
        elif prepared is not None:
            if warm is not None:
                raise ConfigError("prepared: a run with init_from prepares its own data (from the published extractor)")
            if prepared.config != data_config:
                raise ConfigError("prepared: data was prepared from a different DataConfig than data_config")
            data = prepared
        else:
            data = prepare_data(data_config, extractor_options=dict(extractor_options or {}), base=base)
        if prepare == "memory":
            check_training_data(data, train_config)
            # (the distributed path started Ray and checked the workers before preparing)
            init_ray(address, quiet, sigterm_interrupts=sigterm_interrupts)
            check_workers_fit(train_config, ray.cluster_resources(), joined_cluster(address))
        initial = None if warm is None else warm_model(warm, data.extractor.feature_map, train_config.seed)
        run.update(status="running", train=train_config.to_dict(), started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   prepare={"path": prepare, "why": why}, split_periods=data.split_periods,
                   **data_reads(data),
                   columns_read=data.extractor.extra_summary() if getattr(data.extractor, "extra_columns", {})
                   else None)
        if warm is not None:  # a resumed run keeps the record of its first start (what was replaced then)
            run.setdefault("init_from", {**warm.record(), "replaced": notes})
        write_run(out, run)

        if over:  # stopped after its last epoch, before the export (a SIGTERM): export its best checkpoint
            return _finish(out, run, Result.from_path(str(storage.join(run["storage_path"], run["name"]))),
                           train_config, data, time.perf_counter() - started)
        progress = progress_queue() if on_epoch is not None else None
        shared = loop_config(data, model_config, train_config, loop_options, initial)
        trainer = build_trainer(shared, train_config,
                                name=run["name"], storage_path=run["storage_path"],
                                callbacks=[] if progress is None else [ProgressCallback(progress)],
                                datasets=getattr(data, "datasets", None))
        with relay_progress(progress, on_epoch):
            try:
                result = trainer.fit()
            except ray.train.TrainingFailedError as exc:
                write_run(out, {**run, "status": "failed", "error": str(exc)[:4000]})
                raise TrainingError(f"training failed after {train_config.max_failures} restart(s): "
                                    f"{failure_summary(exc)} (full error in {out.location(RUN_FILE)})") from exc
        return _finish(out, run, result, train_config, data, time.perf_counter() - started)


def _check_room_for_data(config: TrainConfig) -> None:
    """Workers streaming Ray Data need CPUs left for its read and encode tasks: with every CPU held by a
    worker, the workers wait for data that no task can produce (a hang, not an error)."""
    total = float(ray.cluster_resources().get("CPU", 0))
    held = config.num_workers * config.cpus_per_worker
    if total - held < 0.5:
        raise ConfigError(f"cpus_per_worker: {config.num_workers} worker(s) x {config.cpus_per_worker} CPU take "
                          f"{held:g} of the cluster's {total:g} CPUs; distributed preparation needs some left for "
                          "Ray Data's tasks: lower num_workers or cpus_per_worker (e.g. 0.5)")


def failure_summary(exc: BaseException) -> str:
    """The exception lines of Ray's multi-rank error report, e.g. "RuntimeError: ... Connection reset"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line[:200] for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line) or "died" in line]
    return "; ".join(dict.fromkeys(causes[:3])) or (lines[0] if lines else type(exc).__name__)


def loop_config(data: PreparedData | DistributedData, model_config: ModelConfig, train_config: TrainConfig,
                options: Optional[Mapping[str, Any]] = None, initial: Optional[torch.nn.Module] = None
                ) -> dict[str, Any]:
    """The worker config: plain dicts plus object refs of the training data.

    Data prepared on the cluster (``DistributedData``) sends only the fitted extractor: the workers stream
    their rows from the datasets given to the trainer (``train.loop``).

    The encoded side tables (user and job catalogs, ~100 MB for 100k users and 100k jobs) go into the
    object store once; workers on a node read that one copy zero-copy. Per rank only the shard's
    (rows, labels) arrays are put, equal-length so DDP ranks step together. ``initial`` (a warm start's
    model, ``warm_model``) goes in as its state dict, put once like the tables.
    """
    check_initial_weights(train_config, initial is not None)
    common = {
        "model": model_config.to_dict(), "train": train_config.to_dict(), "data": data.config.to_dict(),
        "feature_map": data.extractor.feature_map.to_dict(),
        "initial_state": [] if initial is None else [ray.put(initial.state_dict())],
    }
    if isinstance(data, DistributedData):
        popularity = [] if data.popularity is None else [ray.put(data.popularity)]
        return {**common, "extractor": [ray.put(data.extractor)], "popularity": popularity, **dict(options or {})}
    world, train_set = train_config.num_workers, data.sets["train"]
    shards = [train_set.shard(rank, world, equal=True) for rank in range(world)]
    return {
        **common,
        "train_tables": [ray.put(train_set.tables)],
        "train_shards": [ray.put((shard.rows, shard.labels)) for shard in shards],
        "eval_bundle": [ray.put(data.for_split("valid"))],
        **dict(options or {}),
    }


def _check_new_run_dir(out_dir: str | Path) -> None:
    """A new run's directory is neither a file nor a model directory or inside one: a run written into a
    published version (``--out models/NAME/v0001``) made the model unloadable (``best/`` is no file of its
    manifest)."""
    target = str(out_dir)
    if not storage.is_uri(target) and Path(target).expanduser().is_file():
        raise ConfigError(f"--out {out_dir}: a file, not a directory; choose another --out")
    for where in (target, storage.parent(target)):
        if storage.exists(storage.join(where, MANIFEST)):
            inside = "" if where == target else f"inside the model directory {where}: "
            raise ConfigError(f"--out {out_dir}: {inside or 'a model directory: '}a run written there would make the "
                              "model unloadable (it holds only its manifest's files); choose another --out")


def _run_identity(out: StagedDir, resume: bool, data_config: DataConfig, model_config: ModelConfig,
                  storage_path: Optional[str]) -> dict[str, Any]:
    """run.json's identity part: a new run must not reuse a run directory (Ray would silently resume it);
    a resumed one must exist and have the same data and model."""
    out_dir = out.target
    if not resume:
        if storage.exists(out.location(RUN_FILE)):
            raise ConfigError(f"{out_dir} already holds a run; pass --resume {out_dir} or choose another --out")
        checkpoints = str(storage_path or out.location("ray"))
        if not storage.is_uri(checkpoints):
            checkpoints = str(Path(checkpoints).expanduser().resolve())
        return {"name": out.name, "storage_path": checkpoints, "data": data_config.to_dict(),
                "model": model_config.to_dict(), "attempts": 1}
    run = read_run(out_dir)
    check_unchanged(out_dir, run, {"model": model_config.to_dict(), "data": data_config.to_dict()},
                    "run", "a resumed run keeps its data and model")
    run.update(data=data_config.to_dict(), storage_path=storage_path or run["storage_path"],
               attempts=int(run.get("attempts", 1)) + 1)
    return run


def _latest_checkpoint(run: Mapping[str, Any]) -> Optional[ray.train.Checkpoint]:
    try:
        return Result.from_path(str(storage.join(run["storage_path"], run["name"]))).checkpoint
    except (FileNotFoundError, RuntimeError, ValueError):
        return None


def _check_resumable(run: Mapping[str, Any], train_config: TrainConfig) -> tuple[Any, bool]:
    """(the extractor of the run's latest checkpoint, so data encodes as before; whether its training is over,
    its epochs or its patience used up, with its model not exported: a run stopped between its last epoch and
    the export, which is then all that is left to do). Refuses a finished run, or one that stopped on another
    early-stopping metric."""
    checkpoint = _latest_checkpoint(run)
    if checkpoint is None:
        return None, False  # nothing was checkpointed: the run starts over
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
        extractor = load_extractor(Path(directory) / MODEL_DIR)
    check_resumable_metric(state, train_config.early_stopping_metric)
    done, bad = int(state["next_epoch"]), int(state["stopper"]["bad_epochs"])
    exported = run.get("status") == "finished"
    if done >= train_config.num_epochs and exported:
        raise ConfigError(f"num_epochs: the run already trained {done} epoch(s); pass --epochs > {done} to continue")
    if bad >= train_config.patience and exported:
        raise ConfigError(f"patience: the run stopped early after {bad} epoch(s) without improvement; "
                          f"raise patience above {bad} to continue")
    return extractor, done >= train_config.num_epochs or bad >= train_config.patience


def _finish(out: StagedDir, run: dict[str, Any], result: Any, config: TrainConfig,
            data: PreparedData | DistributedData, wall_seconds: float) -> TrainingResult:
    metric, mode = config.early_stopping  # the best checkpoint is the stopper's best epoch
    scored = [(c, m) for c, m in result.best_checkpoints if not math.isnan(float(m.get(metric, math.nan)))]
    if not scored or result.checkpoint is None:
        raise TrainingError(f"run {run['name']} produced no checkpoint with a validation {metric}")
    best_checkpoint, best_metrics = (max if mode == "max" else min)(scored, key=lambda cm: float(cm[1][metric]))
    with best_checkpoint.as_directory() as directory:
        if isinstance(data, PreparedData):
            export_model(Path(directory) / MODEL_DIR, out.local / "best", data)
        else:
            export_model(Path(directory) / MODEL_DIR, out.local / "best", None, data.extra_json)
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
    history = state["history"]
    write_metrics_csv(history, out.local / "metrics.csv")
    plot_curves(history, out.local / "curves.png")
    stopped_early = bool(state["stopper"]["bad_epochs"] >= config.patience and state["next_epoch"] < config.num_epochs)
    restarts = sorted({int(r["run_start_epoch"]) for r in history} - {0})
    best_metrics = dict(best_metrics)
    best_dir = out.location("best")
    run.update(
        status="finished", best_epoch=int(best_metrics["epoch"]), best_metrics=best_metrics,
        epochs_trained=len(history), stopped_early=stopped_early, restarts=restarts,
        wall_seconds=round(wall_seconds, 2), result_path=str(result.path), best_dir=str(best_dir),
    )
    write_run(out, run, "best", "metrics.csv", "curves.png")  # uploads (URI runs) with run.json last
    return TrainingResult(out.target, best_dir, int(best_metrics["epoch"]), best_metrics, history, stopped_early,
                          wall_seconds, restarts, run.get("split_periods"), run.get("columns_read"),
                          run.get("live_catalog"))


def describe_live_catalog(live: Mapping[str, Any]) -> str:
    """What the jobs table took from the service's live catalog (``--events``), as one line."""
    return (f"live catalog v{live['version']} ({live['store']}) applied to the jobs: {live['added']} added, "
            f"{live['replaced']} replaced, {live['expired']} expired")


def format_epoch(record: Mapping[str, Any]) -> str:
    """One progress line per epoch (the CLI and the demo print it)."""
    line = (f"epoch {int(record['epoch']) + 1:3d}  train_loss {record['train_loss']:.4f}  "
            f"val_loss {record['val_loss']:.4f}  val_auc {record['val_roc_auc']:.4f}")
    if "val_ndcg@10" in record:
        line += f"  ndcg@10 {record['val_ndcg@10']:.4f}"
    return line + f"  ({record['samples_per_s']:,.0f} samples/s/worker, {int(record['world_size'])} worker(s))"


def format_summary(result: TrainingResult) -> str:
    best = result.best_metrics
    lines = [
        f"best epoch {result.best_epoch + 1} of {len(result.history)} ({result.best_epoch} in run.json and "
        f"metrics.csv, which count from 0): val_loss {best['val_loss']:.4f}  "
        f"val_auc {best['val_roc_auc']:.4f}"
        + (f"  popularity {best['popularity_roc_auc']:.4f}" if "popularity_roc_auc" in best else "")
        + (f"  oracle {best['oracle_roc_auc']:.4f}" if "oracle_roc_auc" in best else ""),
        f"stopped early: {'yes' if result.stopped_early else 'no'}; resumed at epoch(s): "
        f"{', '.join(str(e + 1) for e in result.restarts) or 'none'}; wall time {result.wall_seconds:.1f}s",
        *([describe_periods(result.split_periods)] if result.split_periods else []),
        *([describe_summary(result.columns_read)] if result.columns_read else []),
        *([describe_live_catalog(result.live_catalog)] if result.live_catalog else []),
        f"best model: {result.best_dir}",
        f"metrics: {storage.join(result.out_dir, 'metrics.csv')}  curves: {storage.join(result.out_dir, 'curves.png')}",
    ]
    return "\n".join(lines)
